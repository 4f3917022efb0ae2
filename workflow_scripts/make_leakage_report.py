#!/usr/bin/env python
"""Write results/leakage/report.md: the leakage check's thresholds and counts, what FACap's data card
did with them, and on the synthetic world (--ground-truth) how many planted copies it found and its
false positives.

Example:
    python workflow_scripts/make_leakage_report.py --summary data/leakage/leakage.json \\
        --matches data/leakage/matches.csv --facap data/facap \\
        --ground-truth data/synthetic/ground_truth.parquet --world data/synthetic/world \\
        --out results/leakage/report.md
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import write_text_atomic  # noqa: E402
from fashionblip2.datasets.leakage_report import leakage_report  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", required=True, help="the leakage rule's summary (JSON)")
    parser.add_argument("--matches", required=True, help="the leakage rule's matched pairs (CSV)")
    parser.add_argument("--facap", required=True, help="the FACap folder (its data card's leakage entry)")
    parser.add_argument("--ground-truth", help="synthetic world only: the ground-truth sidecar (planted copies)")
    parser.add_argument("--world", help="synthetic world only: the world folder its paths are relative to")
    parser.add_argument("--out", required=True, help="the report (Markdown)")
    args = parser.parse_args()
    setup_logging()
    if bool(args.ground_truth) != bool(args.world):
        parser.error("--ground-truth and --world go together")
    summary = json.loads(Path(args.summary).read_text())
    card = json.loads((Path(args.facap) / "data_card.json").read_text())["leakage"]
    matches = pd.read_csv(args.matches, keep_default_na=False)
    truth = pd.read_parquet(args.ground_truth) if args.ground_truth else None
    write_text_atomic(args.out, leakage_report(summary, card, matches, truth, args.world or "", args.matches))


if __name__ == "__main__":
    run_main(main)
