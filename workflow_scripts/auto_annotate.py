#!/usr/bin/env python
"""Score the quality sample automatically from the synthetic world's ground truth (faithfulness,
details, saliency; see fashionblip2/quality/automatic.py), as several annotator files in the kit's CSV
format that differ by seeded noise. Only for the synthetic world: real data needs people.

Example:
    python workflow_scripts/auto_annotate.py --sample results/quality/sample \\
        --manifest data/manifest/images.parquet --ground-truth data/synthetic/ground_truth.parquet \\
        --annotators 3 --noise 0.25 --seed 0 --out results/quality/automatic
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import atomic_directory  # noqa: E402
from fashionblip2.quality.automatic import automatic_scores, noisy_annotator  # noqa: E402
from fashionblip2.quality.table2 import read_sample  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", required=True, help="the quality sample folder (items.csv)")
    parser.add_argument("--manifest", required=True, help="the image manifest (Parquet)")
    parser.add_argument("--ground-truth", required=True, help="the synthetic world's ground truth (Parquet)")
    parser.add_argument("--annotators", required=True, type=int)
    parser.add_argument("--noise", required=True, type=float, help="chance that a score moves by one step")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out", required=True, help="output folder: auto-<k>.csv")
    args = parser.parse_args()
    setup_logging()
    items = read_sample(args.sample)
    scores = automatic_scores(items, pd.read_parquet(args.ground_truth), pd.read_parquet(args.manifest))
    with atomic_directory(args.out) as tmp:
        for k in range(1, args.annotators + 1):
            name = f"auto-{k}"
            noisy_annotator(scores, name, args.noise, args.seed).to_csv(Path(tmp) / f"{name}.csv", index=False)


if __name__ == "__main__":
    run_main(main)
