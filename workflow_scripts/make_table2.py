#!/usr/bin/env python
"""Table 2 (quality of the modification texts): mean ± std of each criterion per dataset over
every item and annotator, and Krippendorff's alpha (ordinal) per criterion; the paper's rows
beside ours, marked as reported. The score files are validated first: a bad file stops the table
with its name and line, and no table is written.

Example:
    python workflow_scripts/make_table2.py --sample results/quality/sample \\
        --annotations filled/alice.csv filled/bob.csv filled/carol.csv \\
        --data synthetic --run-name default --md results/tables/table2.md --csv results/tables/table2.csv \\
        --agreement results/tables/table2_agreement.csv
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.quality.table2 import quality_table, read_annotations, read_sample  # noqa: E402
from fashionblip2.results.writing import write_table  # noqa: E402
from fashionblip2.workflow_cli import (
    add_provenance_arguments,
    add_table_arguments,
    run_main,
    setup_logging,
    table_files,
)  # noqa: E402


def expand(paths: list[str]) -> list[Path]:
    """Files, or folders of *.csv files."""
    out = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.csv")) if p.is_dir() else [p]
    return out


AGREEMENT = "Agreement: Krippendorff's alpha (ordinal)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", required=True, help="the quality sample folder (items.csv)")
    parser.add_argument("--annotations", nargs="+", required=True, help="filled score CSVs, or folders of them")
    parser.add_argument("--automatic", action="store_true", help="the score files come from the automatic annotator")
    add_provenance_arguments(parser)
    add_table_arguments(parser)
    parser.add_argument("--agreement", required=True, help="the agreement section's numbers (CSV)")
    args = parser.parse_args()
    setup_logging()
    items = read_sample(args.sample)
    files = expand(args.annotations)
    scores = read_annotations(files, items)
    origin = f"this run ({args.data} data)"
    table, agreement = quality_table(items, scores, origin)
    annotators = sorted(scores["annotator"].unique())
    who = (
        f"automatic annotators {', '.join(annotators)}: scored from the synthetic world's ground truth, differing "
        "only by seeded noise (a check of the pipeline, not human judgement)"
        if args.automatic
        else f"annotators {', '.join(annotators)} (human, from {len(files)} score files)"
    )
    p = provenance(args.data, args.run_name)
    write_table(
        table,
        table_files(args, {AGREEMENT: "agreement"}),
        "Table 2: quality of the modification texts (1 worst - 5 best)",
        [
            "Mean ± std over every sampled triplet and annotator; the paper samples 216 triplets per dataset.",
            f"Our rows: {who}.",
            "Rows marked 'reported by the paper' are copied from the paper (three human annotators), not recomputed.",
            "Agreement: Krippendorff's alpha (ordinal) per criterion, over all items and per dataset (below).",
            f"Provenance: {p['data']} data, run {p['run_name']}, commit {p['commit']}.",
        ],
        sections={AGREEMENT: agreement},
    )


if __name__ == "__main__":
    run_main(main)
