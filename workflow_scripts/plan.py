#!/usr/bin/env python
"""The bill before it comes: per rule, the jobs, GPU-hours, API requests, tokens, dollars and disk of
the config as given (results/plan.md, and the same as JSON).

The data files are read when they exist and counted from config (plan:) when they do not, so the
plan works on a fresh clone: the manifest and the pairs give the counts, the manifest, pairs and
captions the very requests the annotation stages will send, the pilot's answers the tokens per
answer, and the result cache what is already paid for.

Example:
    python workflow_scripts/plan.py \\
        --config "$(python -c 'import json, yaml; print(json.dumps(yaml.safe_load(open("config.yaml"))))')" \\
        --manifest data/manifest/images.parquet --pairs data/pairs/pairs.parquet \\
        --captions data/annotation/captions.parquet --pilot-pairs data/pilot/pairs.parquet \\
        --pilot-captions data/pilot/captions.parquet --pilot-modifications data/pilot/modifications.parquet \\
        --cache data/cache --caption-prompt prompts/caption.yaml --modification-prompt prompts/modification.yaml \\
        --out results/plan.md --json results/plan.json
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fashionblip2.common.io import atomic_path  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402

log = logging.getLogger("plan")


def read(path: str):
    """A data file when it exists (the plan runs before anything has), else None."""
    import pandas as pd

    return pd.read_parquet(path) if os.path.exists(path) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="JSON: the workflow's whole config")
    # Each data file is read if it exists (the plan runs before anything has been made).
    parser.add_argument("--manifest", required=True, help="the image manifest (Parquet)")
    parser.add_argument("--pairs", required=True, help="the pairs (Parquet)")
    parser.add_argument("--captions", required=True, help="the gathered captions (Parquet)")
    parser.add_argument("--pilot-pairs", required=True, help="the pilot's pairs (Parquet)")
    parser.add_argument("--pilot-captions", required=True, help="the pilot's captions (Parquet)")
    parser.add_argument("--pilot-modifications", required=True, help="the pilot's modification texts (Parquet)")
    parser.add_argument("--cache", required=True, help="the result cache folder, read if it exists")
    parser.add_argument("--caption-prompt", required=True)
    parser.add_argument("--modification-prompt", required=True)
    parser.add_argument("--out", required=True, help="the plan (Markdown)")
    parser.add_argument("--json", required=True, help="the plan (JSON)")
    args = parser.parse_args()
    setup_logging()

    from fashionblip2.annotation.cache import ResultCache
    from fashionblip2.annotation.prompts import PromptTemplate
    from fashionblip2.plan import measured_counts, plan_document, plan_rows, render_markdown, stage_bills

    config = json.loads(args.config)
    manifest, pairs = read(args.manifest), read(args.pairs)
    counts = measured_counts(config, manifest, pairs)
    templates = {
        "caption": PromptTemplate.load(args.caption_prompt),
        "modification": PromptTemplate.load(args.modification_prompt),
    }
    cache = ResultCache(args.cache) if os.path.isdir(args.cache) else None
    bills, prices, pilot_images, notes = stage_bills(
        config,
        counts,
        templates,
        manifest=manifest,
        pairs=pairs,
        captions=read(args.captions),
        pilot_pairs=read(args.pilot_pairs),
        pilot_captions=read(args.pilot_captions),
        pilot_modifications=read(args.pilot_modifications),
        cache=cache,
    )
    rows = plan_rows(config, counts, bills, pilot_images)
    document = plan_document(rows, counts, prices)
    with atomic_path(args.json) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2) + "\n")
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(render_markdown(rows, document["totals"], counts, notes))
    t = document["totals"]["all"]
    log.info(
        "plan: %d jobs, %.2f GPU-hours, %d API requests, at most $%.2f, %.2f GB",
        t["jobs"],
        t["gpu_hours"],
        t["api_requests"],
        t["usd"],
        t["disk_gb"],
    )


if __name__ == "__main__":
    run_main(main)
