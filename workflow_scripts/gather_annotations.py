#!/usr/bin/env python
"""Join the shards of an annotation stage and report what failed, and why.

Example:
    python workflow_scripts/gather_annotations.py \\
        --shards data/annotation/captions/0.parquet data/annotation/captions/1.parquet \\
        --settings '{"backend": "metadata", "max_new_tokens": 128, "max_words": 150, "temperature": 0.2}' \\
        --out data/annotation/captions.parquet --report data/annotation/captions_report.json
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import write_json_atomic, write_parquet_atomic  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", required=True)
    parser.add_argument("--settings", required=True, help="the stage's config section (JSON), recorded in the report")
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    setup_logging()
    frame = pd.concat([pd.read_parquet(p) for p in args.shards], ignore_index=True)
    write_parquet_atomic(args.out, frame)
    settings = json.loads(args.settings)
    failed = frame[frame["status"] != "ok"]
    report = {
        "backend": settings.get("backend"),
        "model": settings.get("model") or settings.get("model_path") or None,
        "items": int(len(frame)),
        "ok": int((frame["status"] == "ok").sum()),
        "failed": int(len(failed)),
        "answered_from_cache": int(frame["cached"].sum()),
        # Asked again after a timeout or a dropped connection: the server may have answered (and
        # billed) the first request too. At most one extra request per question.
        "reasked_after_timeout": int(frame["reasked"].sum()) if "reasked" in frame else 0,
        "failures_by_reason": failed["reason"].value_counts().to_dict(),
        "failures": failed.drop(columns=["text", "cached", "key"]).head(1000).to_dict("records"),
    }
    write_json_atomic(args.report, report)
    logging.getLogger("gather_annotations").info(
        "%d items: %d ok, %d failed", report["items"], report["ok"], report["failed"]
    )


if __name__ == "__main__":
    run_main(main)
