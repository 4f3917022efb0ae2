#!/usr/bin/env python
"""Run one shard of an annotation stage: `caption` (a VLM describes each image of the pairs) or
`modification` (an LLM writes what changes from the reference to the target).

Every accepted answer is stored in the result cache as soon as it arrives, so a killed shard
resumes where it stopped, and a rerun makes no call for what is cached. Before a paid run it logs
the number of requests, estimated tokens and cost. The API key is read from the environment only.

Example:
    python workflow_scripts/annotate.py --stage caption --shard 0 --shards 2 \\
        --settings '{"backend": "metadata", "max_new_tokens": 128, "max_words": 150, "temperature": 0.2}' \\
        --job-options '{"concurrency": 32, "max_failed_fraction": 0.02, "max_retries": 6, "timeout_s": 60}' \\
        --prices '{"image_tokens": 85, "input_per_million": 0.15, "output_per_million": 0.6}' \\
        --prompt prompts/caption.yaml --manifest data/manifest/images.parquet --pairs data/pairs/pairs.parquet \\
        --cache data/cache --batch-state data/annotation/captions/0.batches.json \\
        --failures logs/annotation/caption_0_failures.tsv \\
        --out data/annotation/captions/0.parquet
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.annotation.cache import ResultCache  # noqa: E402
from fashionblip2.annotation.pricing import Prices, is_paid  # noqa: E402
from fashionblip2.annotation.prompts import PromptTemplate  # noqa: E402
from fashionblip2.annotation.runner import check_failures, estimate_cost  # noqa: E402
from fashionblip2.annotation.stages import (  # noqa: E402
    STAGES,
    make_backend,
    plan_captions,
    plan_modifications,
    run_plan,
)
from fashionblip2.common.io import atomic_path, write_parquet_atomic  # noqa: E402
from fashionblip2.common.issues import BadInputError  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument(
        "--settings", required=True, help="JSON: the annotation.<stage> keys that change the answers (backend, ...)"
    )
    parser.add_argument(
        "--job-options",
        required=True,
        help="JSON: the annotation.<stage> keys that change how it runs, not its answers (concurrency, timeouts, "
        "max_failed_fraction: without it any failed answer stops the shard, ...)",
    )
    parser.add_argument("--prices", required=True, help="the config's annotation.prices as JSON")
    parser.add_argument("--prompt", required=True, help="prompt file (YAML chat messages)")
    parser.add_argument("--manifest", help="caption stage: the image manifest")
    parser.add_argument("--pairs", required=True, help="the pairs (Parquet)")
    parser.add_argument("--captions", help="modification stage: the gathered captions (Parquet)")
    parser.add_argument("--cache", required=True, help="result cache folder")
    parser.add_argument("--out", required=True, help="output shard (Parquet)")
    parser.add_argument(
        "--batch-state", required=True, help="openai-batch: where the shard records its batches (kept between runs)"
    )
    parser.add_argument("--failures", help="where the failed items are listed (TSV), written whatever the outcome")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging()
    log = logging.getLogger("annotate")
    settings = {**json.loads(args.settings), **json.loads(args.job_options)}
    template = PromptTemplate.load(args.prompt)
    pairs = pd.read_parquet(args.pairs)
    cache = ResultCache(args.cache)
    backend = make_backend(args.stage, settings, batch_state=args.batch_state)
    if args.stage == "caption":
        plan = plan_captions(pairs, pd.read_parquet(args.manifest), template, settings, args.shard, args.shards)
    else:
        plan = plan_modifications(pairs, pd.read_parquet(args.captions), template, settings, args.shard, args.shards)
    if is_paid(backend.name):
        try:
            prices = Prices.from_config(json.loads(args.prices))
        except ValueError as e:  # a message, not a traceback, and before anything is paid
            raise BadInputError(f"--prices: {e}") from None
        estimate = estimate_cost(
            plan.requests,
            cache,
            backend,
            settings["max_new_tokens"],
            prices,
            with_image=args.stage == "caption",
        )
        log.warning(
            "paid run: %(requests)d requests, ~%(input_tokens)d input tokens, <= %(output_tokens_at_most)d "
            "output tokens, <= $%(cost_usd_at_most).2f",
            estimate,
        )
    frame = run_plan(
        plan,
        settings,
        cache,
        backend,
        desc=f"{args.stage} shard {args.shard}",
        progress=not args.no_progress,
        # A second batch for rejected answers only if it can end before the job's time is up.
        second_chance=getattr(backend, "time_for_another_pass", lambda: True),
    )
    failed = frame[frame["status"] != "ok"]
    if args.failures:
        with atomic_path(args.failures) as tmp:
            failed.drop(columns=["text", "cached"]).to_csv(tmp, sep="\t", index=False)
    # Before the shard is written: a shard with too many failures must not look complete.
    check_failures(
        frame["status"].tolist(),
        frame["reason"].tolist(),
        settings["max_failed_fraction"],
        stage=args.stage,
        failures_path=args.failures,
    )
    write_parquet_atomic(args.out, frame)
    log.info(
        "%s shard %d/%d: %d ok (%d from the cache), %d failed",
        args.stage,
        args.shard,
        args.shards,
        (frame["status"] == "ok").sum(),
        frame["cached"].sum(),
        len(failed),
    )
    if frame["reasked"].any():
        log.warning(
            "%d question(s) asked again after a timeout or a dropped connection (each may be billed twice)",
            frame["reasked"].sum(),
        )
    for counter in ("adopted", "duplicates"):
        if getattr(backend, counter, 0):
            log.warning("batches %s on the server: %d", counter, getattr(backend, counter))
    for row in failed.head(20).itertuples():
        log.warning("failed: %s", row.reason)


if __name__ == "__main__":
    run_main(main)
