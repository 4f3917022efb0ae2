#!/usr/bin/env python
"""Filter FACap by its triplet scores (facap.filters: score -> the least value kept) into a folder of
the same layout, and write the report of what each filter removed, by source and category.

Example:
    python workflow_scripts/filter_facap.py --facap data/facap --filters '{"grounding": 0.5, "form": 1}' \\
        --data synthetic --run-name default --out data/facap_filtered --report results/scores/filters.md
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fashionblip2.common.io import write_text_atomic  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.datasets.filters import filter_facap, filter_report  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facap", required=True, help="the FACap folder (with triplets.parquet)")
    parser.add_argument("--filters", required=True, help="JSON: score name -> the least value kept")
    add_provenance_arguments(parser)
    parser.add_argument("--out", required=True, help="output: the filtered FACap folder")
    parser.add_argument("--report", required=True, help="output: the filter report (Markdown)")
    args = parser.parse_args()
    setup_logging()
    filters = json.loads(args.filters)
    card, counts = filter_facap(args.facap, filters, args.out)
    p = provenance(args.data, args.run_name)
    line = f"Data: {p['data']}; config run: {p['run_name']}; commit: {p['commit']}."
    write_text_atomic(args.report, filter_report(counts, filters, line))
    logging.getLogger("filter_facap").info(
        "FACap filtered: %d of %d triplets kept -> %s",
        card["triplets"],
        card["filtered_from"]["triplets"],
        args.out,
    )


if __name__ == "__main__":
    run_main(main)
