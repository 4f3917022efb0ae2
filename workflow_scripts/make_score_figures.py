#!/usr/bin/env python
"""The triplet scores' report figures: each score's distribution per dataset with its flag threshold,
and a seeded sample of flagged triplets with their images.

Example:
    python workflow_scripts/make_score_figures.py --scores data/scores/triplets.parquet \\
        --manifest data/manifest/images.parquet \\
        --thresholds '{"caption_faithfulness": -2, "grounding": 0.5, "discriminative": 0.25, "form": 1}' \\
        --sample 12 --seed 0 --distributions results/scores/distributions.png --flagged results/scores/flagged.png
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.quality.score_figures import distributions_figure, flagged_sheet  # noqa: E402
from fashionblip2.quality.triplet_scores import flagged_sample  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", required=True, help="the triplet scores (Parquet)")
    parser.add_argument("--manifest", required=True, help="the image manifest (the images' paths)")
    parser.add_argument("--thresholds", required=True, help="JSON: score -> flag threshold (scores.thresholds)")
    parser.add_argument("--sample", required=True, type=int, help="flagged triplets shown")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--distributions", required=True, help="output: the distributions (PNG)")
    parser.add_argument("--flagged", required=True, help="output: the flagged sample (PNG)")
    args = parser.parse_args()
    setup_logging()
    scores, thresholds = pd.read_parquet(args.scores), json.loads(args.thresholds)
    distributions_figure(scores, thresholds, args.distributions)
    sample = flagged_sample(scores, thresholds, args.sample, args.seed)
    flagged_sheet(sample, manifest_paths(pd.read_parquet(args.manifest)), args.flagged)


if __name__ == "__main__":
    run_main(main)
