#!/usr/bin/env python
"""Evaluate a trained FashionBLIP-2 with the FashionIQ protocol on FashionIQ val and enhFashionIQ.

Each category's gallery (FashionIQ's val image split; enhFashionIQ uses the same) is encoded once;
queries are searched by exact inner product (FAISS). Writes, per dataset, a summary JSON (R@10,
R@50 per category, means, Avg, the chance level, skip counts, provenance) and a rankings Parquet
(per query: text, top 10, the target's rank, its hits at 10 and 50). Missing images are skipped
and counted.

Example:
    E=results/eval/stage2/cir_mh
    python workflow_scripts/evaluate_model.py --model models/stage2/cir_mh --manifest data/manifest/images.parquet \\
        --fashioniq-root data/synthetic/world/fashioniq --enhfashioniq data/enhfashioniq \\
        --categories '["dress", "shirt", "toptee"]' --device auto --batch-size 64 --threads 1 --text-cleanup none \\
        --data synthetic --run-name default \\
        --fashioniq-out $E/fashioniq.json $E/fashioniq_rankings.parquet \\
        --enhfashioniq-out $E/enhfashioniq.json $E/enhfashioniq_rankings.parquet
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import write_json_atomic, write_parquet_atomic  # noqa: E402
from fashionblip2.common.issues import InputReport  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.common.runtime import resolve_device, set_threads  # noqa: E402
from fashionblip2.datasets.caption_text import TEXT_CLEANUPS  # noqa: E402
from fashionblip2.datasets.triplets import read_fashioniq_split, read_gallery  # noqa: E402
from fashionblip2.evaluation.retrieval import encode_gallery, evaluate_queries  # noqa: E402
from fashionblip2.model import FashionBLIP2  # noqa: E402
from fashionblip2.model.processing import ImageStore  # noqa: E402
from fashionblip2.model.tokenization import load_tokenizer  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402

log = logging.getLogger("evaluate_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained model folder (with its tokenizer)")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--fashioniq-root", required=True)
    parser.add_argument("--enhfashioniq", help="the enhFashionIQ folder (omit to evaluate FashionIQ only)")
    parser.add_argument("--categories", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--threads", required=True, type=int)
    parser.add_argument(
        "--text-cleanup",
        choices=TEXT_CLEANUPS,
        required=True,
        help="text.cleanup: none (queries as joined) | sprc (SPRC's: lower-cased, punctuation out, 50 words)",
    )
    add_provenance_arguments(parser)
    for name in ("fashioniq", "enhfashioniq"):
        parser.add_argument(
            f"--{name}-out",
            nargs=2,
            metavar=("JSON", "PARQUET"),
            required=name == "fashioniq",
            help=f"where the {name} summary and per-query rankings go",
        )
    args = parser.parse_args()
    if args.enhfashioniq and not args.enhfashioniq_out:
        parser.error("--enhfashioniq needs --enhfashioniq-out")
    setup_logging()
    set_threads(args.threads)
    device = resolve_device(args.device, "evaluation.device")
    categories = json.loads(args.categories)
    manifest = pd.read_parquet(args.manifest)
    available = set(manifest["image_id"])
    model = FashionBLIP2.from_pretrained(args.model).to(device).eval()
    tokenizer = load_tokenizer(args.model)
    store = ImageStore.for_model(manifest_paths(manifest), model)  # as it was trained: size and images.mode
    gallery_report = InputReport()
    galleries = {c: read_gallery(args.fashioniq_root, c, "val", available, gallery_report) for c in categories}
    vectors = {
        c: encode_gallery(model, store, keys, device, args.batch_size, progress=True) for c, keys in galleries.items()
    }
    training = json.loads((Path(args.model) / "training.json").read_text())
    datasets = {"fashioniq": args.fashioniq_root}
    if args.enhfashioniq:
        datasets["enhfashioniq"] = args.enhfashioniq
    for name, root in datasets.items():
        report = InputReport()
        data = read_fashioniq_split(root, "val", categories, available, report, source=name)
        results, rankings = evaluate_queries(
            model, store, tokenizer, data, galleries, vectors, device, progress=True, text_cleanup=args.text_cleanup
        )
        results |= {
            "dataset": name,
            "model": args.model,
            "variant": training.get("name"),
            "stage": training.get("stage"),
            # The tables average over seeds and pair differences by seed; this is the last checkpoint
            # (a training run writes its best-on-val point itself).
            "seed": training["training"]["seed"],
            "checkpoint": "last",
            "skipped": {"queries": report.summary(), "gallery": gallery_report.summary()},
            "provenance": provenance(args.data, args.run_name),
        }
        summary_path, rankings_path = getattr(args, f"{name}_out")
        write_parquet_atomic(rankings_path, rankings)
        write_json_atomic(summary_path, results)
        log.info("%s: %s (chance %s)", name, results["summary"], results["chance"])


if __name__ == "__main__":
    run_main(main)
