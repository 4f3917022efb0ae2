#!/usr/bin/env python
"""Run one shard of an annotation stage: `caption` (a VLM describes each image of the pairs) or
`modification` (an LLM writes what changes from the reference to the target).

Every accepted answer is stored in the result cache as soon as it arrives, so a killed shard
resumes where it stopped, and a rerun makes no call for what is cached. Before a paid run it logs
the number of requests, estimated tokens and cost. The API key is read from the environment only.

Example:
    python workflow_scripts/annotate.py --stage caption --shard 0 --shards 1 \\
        --settings '{"backend": "metadata"}' --prompt prompts/caption.yaml \\
        --manifest data/manifest/images.parquet --pairs data/pairs/pairs.parquet \\
        --cache data/cache --out data/annotation/captions/0.parquet
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.annotation.cache import ResultCache  # noqa: E402
from fashionblip2.annotation.prompts import PromptTemplate  # noqa: E402
from fashionblip2.annotation.runner import CAPTION_FAILED, Prices, annotate, check_failures, estimate_cost  # noqa: E402
from fashionblip2.annotation.stages import (  # noqa: E402
    STAGES,
    caption_requests,
    checker,
    images_to_caption,
    make_backend,
    modification_requests,
)
from fashionblip2.cli_utils import run_main, setup_logging  # noqa: E402
from fashionblip2.common.io import atomic_path, write_parquet_atomic  # noqa: E402
from fashionblip2.pairing.embedding_file import shard_bounds  # noqa: E402

COLUMNS = ["reference_id", "target_id", "image_id", "text", "status", "reason", "cached", "key"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument(
        "--settings", required=True, help="JSON: the annotation.<stage> keys that change the answers (backend, ...)"
    )
    parser.add_argument(
        "--run-settings",
        default="{}",
        help="JSON: the annotation.<stage> keys that change how it runs, not its answers (concurrency, timeouts, "
        "max_failed_fraction: without it any failed answer stops the shard, ...)",
    )
    parser.add_argument("--prices", default="{}", help="the config's annotation.prices as JSON")
    parser.add_argument("--prompt", required=True, help="prompt file (YAML chat messages)")
    parser.add_argument("--manifest", help="caption stage: the image manifest")
    parser.add_argument("--pairs", required=True, help="the pairs (Parquet)")
    parser.add_argument("--captions", help="modification stage: the gathered captions (Parquet)")
    parser.add_argument("--cache", required=True, help="result cache folder")
    parser.add_argument("--out", required=True, help="output shard (Parquet)")
    parser.add_argument("--failures", help="where the failed items are listed (TSV), written whatever the outcome")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging()
    log = logging.getLogger("annotate")
    settings = {**json.loads(args.settings), **json.loads(args.run_settings)}
    template = PromptTemplate.load(args.prompt)
    pairs = pd.read_parquet(args.pairs)

    if args.stage == "caption":
        items = images_to_caption(pairs, pd.read_parquet(args.manifest))
        start, end = shard_bounds(len(items), args.shards, args.shard)
        items = items.iloc[start:end]
        requests = caption_requests(items, template, settings)
        rows = {"image_id": items["image_id"].tolist()}
        skipped = []
    else:
        captions = pd.read_parquet(args.captions)
        ok = dict(zip(*captions.loc[captions["status"] == "ok", ["image_id", "text"]].T.to_numpy(), strict=True))
        items = pairs.sort_values(["reference_id", "target_id"]).reset_index(drop=True)
        start, end = shard_bounds(len(items), args.shards, args.shard)
        items = items.iloc[start:end]
        has = items["reference_id"].isin(ok) & items["target_id"].isin(ok)
        skipped = items[~has]
        items = items[has]
        requests = modification_requests(items, ok, template, settings)
        rows = {"reference_id": items["reference_id"].tolist(), "target_id": items["target_id"].tolist()}

    cache = ResultCache(args.cache)
    out = Path(args.out)
    backend = make_backend(args.stage, settings, batch_state=str(out.with_name(f"{out.stem}.batches.json")))
    if settings.get("backend", "").startswith("openai"):
        estimate = estimate_cost(
            requests,
            cache,
            backend,
            settings.get("max_new_tokens", 128),
            Prices(**json.loads(args.prices)),
            with_image=args.stage == "caption",
        )
        log.warning(
            "paid run: %(requests)d requests, ~%(input_tokens)d input tokens, <= %(output_tokens_at_most)d "
            "output tokens, <= $%(cost_usd_at_most).2f",
            estimate,
        )
    outcomes = annotate(
        requests,
        backend,
        cache,
        checker(args.stage, settings),
        desc=f"{args.stage} shard {args.shard}",
        progress=not args.no_progress,
        # A second batch for rejected answers only if it can end before the job's time is up.
        second_chance=getattr(backend, "time_for_another_pass", lambda: True),
    )
    frame = pd.DataFrame(
        {
            **rows,
            "text": [o.text for o in outcomes],
            "status": [o.status for o in outcomes],
            "reason": [o.reason for o in outcomes],
            "cached": [o.cached for o in outcomes],
            "key": [o.key for o in outcomes],
        }
    )
    if len(skipped):
        frame = pd.concat(
            [
                frame,
                pd.DataFrame(
                    {
                        "reference_id": skipped["reference_id"],
                        "target_id": skipped["target_id"],
                        "text": None,
                        "status": "failed",
                        "reason": CAPTION_FAILED,
                        "cached": False,
                        "key": "",
                    }
                ),
            ]
        )
    failed = frame[frame["status"] != "ok"]
    if args.failures:
        with atomic_path(args.failures) as tmp:
            failed.drop(columns=["text", "cached"]).to_csv(tmp, sep="\t", index=False)
    # Before the shard is written: a shard with too many failures must not look complete.
    check_failures(
        frame["status"].tolist(),
        frame["reason"].tolist(),
        settings.get("max_failed_fraction", 0.0),
        stage=args.stage,
        failures_path=args.failures,
    )
    write_parquet_atomic(args.out, frame.reindex(columns=[c for c in COLUMNS if c in frame.columns]))
    log.info(
        "%s shard %d/%d: %d ok (%d from the cache), %d failed",
        args.stage,
        args.shard,
        args.shards,
        (frame["status"] == "ok").sum(),
        frame["cached"].sum(),
        len(failed),
    )
    for row in failed.head(20).itertuples():
        log.warning("failed: %s", row.reason)


if __name__ == "__main__":
    run_main(main)
