#!/usr/bin/env python
"""Generate the synthetic fashion world (Fashion200k, DeepFashion-MultiModal and FashionIQ trees)
and its ground-truth sidecar.

Example:
    python workflow_scripts/make_synthetic_world.py --spec '{"seed": 1}' \\
        --out data/synthetic/world --ground-truth data/synthetic/ground_truth.parquet
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fashionblip2.synthetic import WorldSpec, generate_world  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="the config's `synthetic` section as JSON")
    parser.add_argument("--out", required=True, help="folder to write the three dataset trees and world.json into")
    parser.add_argument("--ground-truth", required=True, help="Parquet file for the true attributes (evaluation only)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args()
    setup_logging()
    spec = WorldSpec.from_dict(json.loads(args.spec))
    meta = generate_world(spec, args.out, args.ground_truth, progress=not args.no_progress)
    logging.getLogger("make_synthetic_world").info("wrote %s: %s images per source", args.out, meta["images"])


if __name__ == "__main__":
    run_main(main)
