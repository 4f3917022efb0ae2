#!/usr/bin/env python
"""Write the annotation kit for the quality sample: per annotator a self-contained HTML page
(open it in a browser from the file system: keyboard or mouse scoring, progress kept in the
browser, CSV export) and the same items as a CSV template, plus images/ for spreadsheet users.
Items appear in a per-annotator shuffled order; the dataset of an item is never shown.

Example:
    python workflow_scripts/make_annotation_kit.py --sample results/quality/sample \\
        --manifest data/manifest/images.parquet --annotators 3 --seed 0 --image-size 320 \\
        --out results/quality/kit
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import atomic_directory  # noqa: E402
from fashionblip2.quality.kit import write_kit  # noqa: E402
from fashionblip2.quality.table2 import read_sample  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", required=True, help="the quality sample folder (items.csv)")
    parser.add_argument("--manifest", required=True, help="the image manifest (Parquet)")
    parser.add_argument("--annotators", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int, help="seeds each annotator's item order")
    parser.add_argument("--image-size", required=True, type=int, help="longest side of the images shown (pixels)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    setup_logging()
    items = read_sample(args.sample)
    paths = manifest_paths(pd.read_parquet(args.manifest))
    with atomic_directory(args.out) as tmp:
        write_kit(items, paths, tmp, args.annotators, args.seed, args.image_size)


if __name__ == "__main__":
    run_main(main)
