#!/usr/bin/env python
"""Draw the quality-evaluation sample (paper §3.2): a seeded sample of N triplets per dataset
(FACap, FashionIQ, enhFashionIQ), stratified by category, under opaque item ids; writes items.csv
(the only file that says which dataset an item comes from), the items' reference and target images
in images/, and report.json.

Example:
    python workflow_scripts/make_quality_sample.py --manifest data/manifest/images.parquet \\
        --facap data/facap --fashioniq-root data/synthetic/world/fashioniq --enhfashioniq data/enhfashioniq \\
        --fashioniq-split val --categories '["dress", "shirt", "toptee"]' --size 216 --seed 0 \\
        --data synthetic --run-name default --out results/quality/sample
"""

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import atomic_directory, write_json_atomic  # noqa: E402
from fashionblip2.common.issues import InputReport  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.quality.table2 import SAMPLE_ITEMS, build_sample, collect_triplets  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402

log = logging.getLogger("make_quality_sample")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="the image manifest (Parquet)")
    parser.add_argument("--facap", help="the FACap folder (left out if not given)")
    parser.add_argument("--fashioniq-root", help="the FashionIQ folder (left out if not given)")
    parser.add_argument("--enhfashioniq", help="the enhFashionIQ folder (left out if not given)")
    parser.add_argument("--fashioniq-split", required=True, help="the FashionIQ split sampled")
    parser.add_argument("--categories", required=True, help="JSON list")
    parser.add_argument("--size", required=True, type=int, help="triplets per dataset (all when fewer)")
    parser.add_argument("--seed", required=True, type=int)
    add_provenance_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    setup_logging()
    manifest = pd.read_parquet(args.manifest)
    report = InputReport()
    triplets = collect_triplets(
        manifest, args.facap, args.fashioniq_root, args.enhfashioniq, args.fashioniq_split,
        json.loads(args.categories), report,
    )  # fmt: skip
    items = build_sample(triplets, args.size, args.seed)
    paths = manifest_paths(manifest)
    with atomic_directory(args.out) as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        for item in items.itertuples():
            for role, image_id in (("reference", item.reference_id), ("target", item.target_id)):
                source = Path(paths[image_id])
                shutil.copyfile(source, tmp / "images" / f"{item.item_id}_{role}{source.suffix.lower()}")
        items.to_csv(tmp / SAMPLE_ITEMS, index=False)
        counts = items.groupby(["dataset", "category"]).size()
        write_json_atomic(
            tmp / "report.json",
            {
                "size_per_dataset": args.size,
                "seed": args.seed,
                "available": {name: len(rows) for name, rows in triplets.items()},
                "sampled": {d: {c: int(n) for c, n in counts[d].items()} for d in counts.index.levels[0]},
                "skipped": report.summary(),
                "provenance": provenance(args.data, args.run_name),
            },
        )
    for name, rows in triplets.items():
        log.info("%s: %d of %d triplets sampled", name, int((items["dataset"] == name).sum()), len(rows))


if __name__ == "__main__":
    run_main(main)
