#!/usr/bin/env python
"""Table 1 (dataset statistics): FACap's modification texts and captions and FashionIQ train,
computed from the files, beside the rows the paper reports.

Example:
    python workflow_scripts/make_table1.py --facap data/facap --fashioniq-root data/synthetic/world/fashioniq \\
        --data synthetic --run-name default --md results/tables/table1.md --csv results/tables/table1.csv
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fashionblip2.common.issues import InputReport  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.datasets.table1 import TOKENISATION, facap_rows, fashioniq_row, table1  # noqa: E402
from fashionblip2.results.writing import write_table  # noqa: E402
from fashionblip2.sources import read_fashioniq_triplets  # noqa: E402
from fashionblip2.workflow_cli import (
    add_provenance_arguments,
    add_table_arguments,
    run_main,
    setup_logging,
    table_files,
)  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facap", required=True, help="the FACap folder")
    parser.add_argument("--facap-filtered", help="the filtered FACap folder (facap.filters), for its rows")
    parser.add_argument("--fashioniq-root", required=True, help="the FashionIQ folder (its train captions)")
    add_provenance_arguments(parser)
    add_table_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    origin = f"this run ({args.data} data)"
    fiq = read_fashioniq_triplets(args.fashioniq_root, InputReport(), splits=["train"])
    filtered = facap_rows(args.facap_filtered, origin, "filtered") if args.facap_filtered else []
    frame = table1(facap_rows(args.facap, origin) + filtered + [fashioniq_row(fiq, origin)])
    p = provenance(args.data, args.run_name)
    write_table(
        frame,
        table_files(args),
        "Table 1: dataset statistics",
        [
            f"Tokenisation: {TOKENISATION}. Vocabulary size is the number of distinct tokens; "
            "average length is in tokens "
            "per text (FashionIQ: per relative caption, two per pair).",
            "Rows marked 'reported by the paper' are copied from the paper, not recomputed.",
            f"Data: {p['data']}; config run: {p['run_name']}; commit: {p['commit']}.",
        ],
    )


if __name__ == "__main__":
    run_main(main)
