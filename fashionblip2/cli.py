"""The ``fashionblip2`` console command.

    fashionblip2 search --model models/stage2/cir_mh/seed0 --index results/index/stage2/cir_mh \\
        --image my_dress.jpg --text "is red and has shorter sleeves" --top-k 10 --sheet results.png
    fashionblip2 browse --run . --port 7860   # a local read-only web app: the datasets, search, leakage
    fashionblip2 store pin      # pin what the workflow starts from in the root data.dvc (config: dvc.pin)
    fashionblip2 store push     # dvc add + dvc push the expensive artefacts (config: dvc:)
    fashionblip2 store pull     # in a fresh clone: dvc pull, then mark the pulled outputs done
    fashionblip2 batches show data/annotation/captions/0.batches.json     # openai-batch's record
    fashionblip2 batches abandon data/annotation/captions/0.batches.json  # give up its open batches
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashionblip2.workflow_cli import setup_logging


def search(args: argparse.Namespace) -> int:
    import torch

    from fashionblip2.common.runtime import resolve_device
    from fashionblip2.evaluation.retrieval import load_index
    from fashionblip2.model import FashionBLIP2
    from fashionblip2.model.processing import ImageStore
    from fashionblip2.model.tokenization import load_tokenizer, tokenize
    from fashionblip2.results.figures import SheetRow, contact_sheet

    index, ids, paths = load_index(args.index)
    device = resolve_device(args.device, "--device")
    model = FashionBLIP2.from_pretrained(args.model).to(device).eval()
    if index.d != model.heads * model.config.head_dim:
        raise SystemExit(
            f"{args.index} holds {index.d}-d vectors; {args.model} makes "
            f"{model.heads * model.config.head_dim}-d ones: index the gallery with this model"
        )
    tokenizer = load_tokenizer(args.model)
    pixels = ImageStore.for_model({"reference": args.image}, model, cache=False).pixels(["reference"])
    ids_t, mask = tokenize(tokenizer, [args.text], model.config.max_text_length)
    with torch.no_grad():
        query = model.query_embedding(pixels.to(device), ids_t.to(device), mask.to(device))
    scores, top = index.search(query.float().cpu().numpy(), min(args.top_k, index.ntotal))
    print(f"{'rank':>4}  {'score':>8}  image_id")
    for rank, (i, s) in enumerate(zip(top[0], scores[0], strict=True), 1):
        print(f"{rank:>4}  {s:8.4f}  {ids[i]}")
    if args.sheet:
        row = SheetRow(
            args.image, args.text, [paths[i] for i in top[0]], [f"#{r} {s:.3f}" for r, s in enumerate(scores[0], 1)]
        )
        contact_sheet([row], args.sheet, title=f"fashionblip2 search: {args.model}")
        print(f"contact sheet: {args.sheet}")
    return 0


def browse(args: argparse.Namespace) -> int:
    import uvicorn

    from fashionblip2.browse.app import LOOPBACK_HOSTS, Run, create_app
    from fashionblip2.common.runtime import resolve_device, set_threads

    set_threads(args.threads)
    run = Run(args.run_dir, resolve_device(args.device, "--device"), args.image_root)
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback:
        print(
            f"fashionblip2 browse: serving on {args.host}: anyone who can reach this machine can read the run's "
            "images and tables (there is no login)",
            file=sys.stderr,
        )
    wildcard = args.host in ("0.0.0.0", "::", "")
    # Loopback (or the one named host) only: a web page cannot then reach the app by DNS rebinding.
    hosts = None if wildcard else [*LOOPBACK_HOSTS, args.host]
    app = create_app(run, allowed_hosts=hosts)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"fashionblip2 browse: {run.root}: {len(run.triplets):,} triplets, {len(run.images.frame):,} images, "
        f"models: {', '.join(run.models.names()) or 'none (no index under results/index)'}"
    )
    print(f"open http://{shown}:{args.port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def workflow_config(root: Path, configfiles: list[str]) -> dict:
    """config.yaml with the given config files merged over it, as Snakemake merges them, validated."""
    import yaml
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((root / "config.yaml").read_text())
    for path in configfiles:
        update_config(config, yaml.safe_load((root / path).read_text()) or {})
    validate(config, str(root / "config" / "schema.yaml"))
    return config


def store(args: argparse.Namespace) -> int:
    from fashionblip2 import dvc_store

    root = Path(args.root).resolve()
    settings = workflow_config(root, args.configfile)["dvc"]
    try:
        if args.action == "pin":
            paths = dvc_store.pin(root, settings)
            print(f"pinned in {dvc_store.PIN_FILE}: {', '.join(paths)}; commit it:")
            print(f"  git add {dvc_store.PIN_FILE} && git commit -m 'DVC: pin the input data'")
        elif args.action == "push":
            files = dvc_store.push(root, settings)
            print(f"pushed {len(files)} tracked paths to {settings['remote']['url']}; commit their .dvc files:")
            tops = sorted({Path(f).parts[0] for f in files})
            print(f"  git add .dvc .dvcignore {' '.join(tops)} && git commit -m 'DVC: tracked artefacts'")
        else:
            extra = ["--configfile", *args.configfile] if args.configfile else []
            touched = dvc_store.pull(root, settings, extra)
            print(f"pulled and marked up to date: {len(touched)} outputs")
            for path in touched:
                print(f"  {path}")
            print("what is left to run: snakemake -n all")
    except dvc_store.StoreError as e:
        print(f"fashionblip2 store {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def batches(args: argparse.Namespace) -> int:
    from fashionblip2.annotation.openai_batch import BatchState, abandon

    for path in args.state_files:
        if not Path(path).is_file():
            print(f"fashionblip2 batches: no batch state file at {path}", file=sys.stderr)
            return 2
        if args.action == "abandon":
            gone = abandon(path)
            print(f"{path}: abandoned {len(gone)} open batch(es){': ' + ', '.join(gone) if gone else ''}")
            continue
        state = BatchState.load(path)
        print(f"{path} (run key {state.run_key}, shard {state.shard})")
        for e in state.batches:
            flags = [f for f in ("read", "abandoned") if e.get(f)]
            print(
                f"  {e.get('batch_id') or '(no batch id)':<24} {e.get('status', '?'):<12} "
                f"{len(e.get('custom_ids', [])):>7} requests  input {e.get('input_file_id')}  {' '.join(flags)}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fashionblip2", description="FACap / FashionBLIP-2 tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "search",
        help="composed image retrieval: a reference image and a modification text against an indexed gallery",
        description="Print the top-k gallery images for a reference image and a text (and draw a contact sheet).",
    )
    p.add_argument("--model", required=True, help="a trained FashionBLIP-2 folder (models/stage2/<variant>/seed<N>)")
    p.add_argument("--index", required=True, help="a gallery index folder (results/index/<stage>/<variant>)")
    p.add_argument("--image", required=True, help="the reference image file")
    p.add_argument("--text", required=True, help="the modification text")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--sheet", help="also write a contact-sheet PNG here")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=search)
    p = sub.add_parser(
        "browse",
        help="a local, read-only web app over a finished run: the datasets, composed search, leakage pairs",
        description="Serve a page to explore FACap, enhFashionIQ and FashionIQ (filters, sorting, paging), search "
        "with any model that has an index under results/index (a reference from the run or an upload, two models "
        "side by side) and look at the leakage check's pairs. Nothing is written; uploads stay in memory.",
    )
    p.add_argument(
        "--run", dest="run_dir", default=".", help="the finished run (the workflow folder after `make demo`)"
    )
    p.add_argument("--port", type=int, default=7860, help="(default: 7860)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--device", default="auto", help="where the models run: auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the models (0: PyTorch's default)")
    p.add_argument(
        "--image-root",
        action="append",
        default=[],
        help="another folder images may resolve into (e.g. a DVC cache the image files link to); repeatable",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=browse)
    p = sub.add_parser(
        "store",
        help="push the expensive artefacts to the DVC remote, or pull them into a fresh clone",
        description="pin: record what the workflow starts from (dvc.pin: the raw datasets or the synthetic world) "
        "in the root data.dvc. push: dvc add + dvc push every existing path of dvc.track (config) and the pinned "
        "data. pull: dvc pull, then `snakemake --touch` the pulled outputs so that Snakemake does not recompute them.",
    )
    p.add_argument("action", choices=["pin", "push", "pull"])
    p.add_argument("--configfile", nargs="*", default=[], help="config files merged over config.yaml, as for snakemake")
    p.add_argument("--root", default=".", help="the workflow checkout (a git repository)")
    p.set_defaults(run=store)
    p = sub.add_parser(
        "batches",
        help="show or abandon the openai-batch batches a shard recorded (<shard>.batches.json)",
        description="show: each recorded batch, its status and how many requests it holds. abandon: give up the "
        "open batches of the given state files (e.g. made with another API key or base_url, which the server "
        "does not know): the next run asks again only the requests without an answer in the cache. A batch "
        "still running elsewhere is then paid for twice.",
    )
    p.add_argument("action", choices=["show", "abandon"])
    p.add_argument("state_files", nargs="+", help="e.g. data/annotation/captions/0.batches.json")
    p.set_defaults(run=batches)
    args = parser.parse_args(argv)
    setup_logging()
    if args.run in (store, batches):
        return args.run(args)
    import logging

    import transformers

    # The command prints a result table: keep library chatter (FAISS's loader, transformers) out of it.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    try:
        return args.run(args)  # search or browse
    except FileNotFoundError as e:
        print(f"fashionblip2: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
