#!/usr/bin/env python
"""Measure the automatic triplet scores against the synthetic world's ground truth (issue 22): the
ground-truth labels of every triplet (wrong modification text, planted or not; wrong caption), each
score's ROC AUC with a bootstrap interval and its precision / recall at its threshold, and, with the
quality sample's ratings, each score's Spearman correlation with Table 2's criteria. Only for the
synthetic world: real data has no ground truth. See fashionblip2/quality/score_validity.py.

Example:
    python workflow_scripts/score_validity.py --scores data/scores/triplets.parquet \\
        --manifest data/manifest/images.parquet --ground-truth data/synthetic/ground_truth.parquet \\
        --planted-errors '{"hallucination": 0.05, "wrong_direction": 0.05, "target_only": 0.05, "seed": 0}' \\
        --modification-backend rules \\
        --score-columns '["caption_faithfulness", "grounding", "discriminative", "form"]' \\
        --thresholds '{"caption_faithfulness": 0.5, "grounding": 0.5, "discriminative": 0.5, "form": 0.5}' \\
        --items results/quality/sample/items.csv --ratings results/quality/automatic \\
        --samples 1000 --seed 0 --data synthetic --run-name default \\
        --out-md results/scores/validity.md --out-csv results/scores/validity.csv \\
        --out-labels data/scores/truth_labels.parquet
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.annotation.planted_errors import PlantedErrors  # noqa: E402
from fashionblip2.common.io import write_parquet_atomic, write_text_atomic  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.quality.score_validity import (  # noqa: E402
    LABEL_COLUMNS,
    VALIDITY_COLUMNS,
    rating_correlations,
    ratings_markdown,
    to_markdown,
    truth_labels,
    validity_table,
)
from fashionblip2.quality.table2 import SAMPLE_ITEMS, read_annotations  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402


def expand(paths: list[str]) -> list[Path]:
    """Files, or folders of *.csv files (as make_table2.py takes the score files)."""
    out = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.csv")) if p.is_dir() else [p]
    return out


def read_items(path: str) -> pd.DataFrame:
    """items.csv, or the quality sample folder holding it; every column as text (ids stay ids)."""
    file = Path(path) / SAMPLE_ITEMS if Path(path).is_dir() else Path(path)
    return pd.read_csv(file, dtype=str, keep_default_na=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", required=True, help="the triplet scores (Parquet, one row per triplet)")
    parser.add_argument("--manifest", required=True, help="the image manifest (Parquet)")
    parser.add_argument(
        "--ground-truth",
        help="the synthetic world's ground truth (Parquet); without it (real data) only the ratings are compared",
    )
    parser.add_argument(
        "--planted-errors",
        required=True,
        help="JSON of annotation.modification.planted_errors ({hallucination, wrong_direction, target_only, seed}), "
        'or "" for none',
    )
    parser.add_argument("--modification-backend", required=True, help="annotation.modification.backend")
    parser.add_argument("--score-columns", required=True, help="JSON list of the score columns (higher = better)")
    parser.add_argument("--thresholds", required=True, help="JSON map: score column -> flagged below this")
    parser.add_argument("--items", help="the quality sample's items.csv (or its folder); needs --ratings")
    parser.add_argument("--ratings", nargs="*", help="Table 2 score CSVs, or folders of them; needs --items")
    parser.add_argument("--samples", required=True, type=int, help="bootstrap resamples")
    parser.add_argument("--seed", required=True, type=int, help="seed of the bootstrap resamples")
    add_provenance_arguments(parser)
    parser.add_argument("--out-md", required=True, help="the report (Markdown)")
    parser.add_argument("--out-csv", required=True, help="the validity table (CSV)")
    parser.add_argument("--out-labels", required=True, help="the ground-truth label of every triplet (Parquet)")
    args = parser.parse_args()
    setup_logging()
    if bool(args.items) != bool(args.ratings):
        parser.error("--items and --ratings go together")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    try:
        planted = PlantedErrors(**json.loads(args.planted_errors)) if args.planted_errors.strip() else None
        score_columns = json.loads(args.score_columns)
        thresholds = json.loads(args.thresholds)
    except (ValueError, TypeError) as e:  # bad JSON, a missing or unknown rate, rates that sum past 1
        parser.error(f"--planted-errors, --score-columns or --thresholds: {e}")
    if not isinstance(score_columns, list) or not isinstance(thresholds, dict):
        parser.error("--score-columns must be a JSON list and --thresholds a JSON map")

    if not args.ground_truth and not args.items:
        parser.error("without --ground-truth (real data) give --items and --ratings: nothing to measure against")
    scores = pd.read_parquet(args.scores)
    correlations = None
    if args.items:
        items = read_items(args.items)
        ratings = read_annotations(expand(args.ratings), items)
        correlations = rating_correlations(scores, items, ratings, score_columns, args.samples, args.seed)
    p = provenance(args.data, args.run_name)
    origin = (
        f"Provenance: {p['data']} data, run {p['run_name']}, commit {p['commit']} "
        f"(fashionblip2 {p['package_version']}); scores {args.scores}, "
        f"modification backend {args.modification_backend}, planted errors {planted.tag if planted else 'none'}."
    )
    if not args.ground_truth:
        # Real data: the labels and the validity table are empty (their files still exist, for the rule).
        write_parquet_atomic(args.out_labels, pd.DataFrame(columns=LABEL_COLUMNS))
        write_text_atomic(args.out_csv, pd.DataFrame(columns=VALIDITY_COLUMNS).to_csv(index=False))
        write_text_atomic(args.out_md, ratings_markdown(correlations, origin, args.samples, args.seed))
        return
    labels = truth_labels(
        scores, pd.read_parquet(args.ground_truth), pd.read_parquet(args.manifest), planted, args.modification_backend
    )
    validity = validity_table(scores, labels, score_columns, thresholds, args.samples, args.seed)
    write_parquet_atomic(args.out_labels, labels)
    write_text_atomic(args.out_csv, validity.to_csv(index=False))
    # The report last: it is the rule's report item, so it exists only when the others do.
    write_text_atomic(args.out_md, to_markdown(validity, labels, origin, args.samples, args.seed, correlations))


if __name__ == "__main__":
    run_main(main)
