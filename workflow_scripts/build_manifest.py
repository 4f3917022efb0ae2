#!/usr/bin/env python
"""Read every configured source (Fashion200k, DeepFashion-MultiModal, FashionIQ, a user catalogue),
check each image once, and write the image manifest, the FashionIQ triplets and a report of every
record that was skipped or repaired (with its file and line).

Example:
    python workflow_scripts/build_manifest.py \\
        --sources '{"fashioniq": {"enabled": true, "root": "data/synthetic/world/fashioniq"}}' \\
        --verify decode --threads 1 --data synthetic --run-name default \\
        --images data/manifest/images.parquet --triplets data/manifest/fashioniq_triplets.parquet \\
        --report data/manifest/report.json --issues data/manifest/issues.tsv
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fashionblip2.common.images import VERIFY_LEVELS  # noqa: E402
from fashionblip2.common.io import atomic_path, write_json_atomic, write_parquet_atomic  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.sources.manifest import build_manifest, manifest_summary  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", required=True, help="the config's `sources` section as JSON, roots resolved")
    parser.add_argument("--verify", required=True, choices=VERIFY_LEVELS, help="how thoroughly to check images")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    parser.add_argument("--threads", required=True, type=int, help="processes for the image checks")
    add_provenance_arguments(parser)
    parser.add_argument("--images", required=True, help="output: the image manifest (Parquet)")
    parser.add_argument("--triplets", required=True, help="output: FashionIQ triplets whose images exist (Parquet)")
    parser.add_argument("--report", required=True, help="output: counts and provenance (JSON)")
    parser.add_argument("--issues", required=True, help="output: one line per skipped or repaired record (TSV)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args()
    setup_logging()
    log = logging.getLogger("build_manifest")

    sources = json.loads(args.sources)
    result = build_manifest(
        sources, verify=args.verify, strict=args.strict, workers=args.threads, progress=not args.no_progress
    )
    summary = manifest_summary(
        result, {"provenance": provenance(args.data, args.run_name), "sources": sources, "verify_images": args.verify}
    )
    write_parquet_atomic(args.images, result.images)
    write_parquet_atomic(args.triplets, result.triplets)
    with atomic_path(args.issues) as tmp:
        result.report.to_frame().to_csv(tmp, sep="\t", index=False)
    write_json_atomic(args.report, summary)
    log.info("manifest: %s images kept of %s read", summary["images_kept"], summary["images_read"])
    log.info("FashionIQ triplets kept: %s", summary["fashioniq_triplets_kept"])
    for source, counts in summary["issues_by_source"].items():
        log.warning("%s: %s (details in %s)", source, counts, args.issues)


if __name__ == "__main__":
    run_main(main)
