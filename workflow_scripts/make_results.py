#!/usr/bin/env python
"""The paper's experiment tables and figures from the evaluation files the workflow passes in.

    table3   FashionIQ val, without and with fine-tuning, beside the paper's rows (reported)
    table4   with and without FACap pretraining, fine-tuned; FashionIQ and enhFashionIQ
    table5   the component ablation, without and with fine-tuning, on both evaluation sets
    table6   beyond the paper: each variant trained on the filtered FACap against its
             <variant>_unfiltered twin, without and with fine-tuning, on both evaluation sets
    figure5  recall against the FACap training fraction (without fine-tuning)
    figure6  qualitative results: reference, text, top-k with the target framed, its rank

Each evaluation is a pair of files written by evaluate_model.py, given in the same order:
--results <dataset>.json ... --rankings <dataset>_rankings.parquet ...; they say themselves which
model (stage, variant), evaluation set, training seed ("seed", 0 if absent) and checkpoint
("checkpoint": "last", the default, or "best", the best on FashionIQ val) they hold: pass every
seed's files and the best-on-val ones. Every number we compute is the mean over the seeds with a
bootstrap 95 % interval over seeds and queries; Tables 3-5 show the best-on-val FashionIQ numbers
beside the last ones (left out when no best-on-val file is given); each comparison a table makes,
between last checkpoints, gets a paired test (over queries with one seed, over seeds and queries
with several). A table is written to
--md, --csv (with the bounds), --tex and --differences; Figure 5 to --out (the PNG), --csv and
--differences; Figure 6 to --out.

Example:
    python workflow_scripts/make_results.py table3 \\
        --spec '{"without_finetuning": "cir_ctr_mh", "with_finetuning": "cir_mh"}' \\
        --results results/eval/stage1/cir_ctr_mh/fashioniq.json results/eval/stage2/cir_mh/fashioniq.json \\
        --rankings results/eval/stage1/cir_ctr_mh/fashioniq_rankings.parquet \\
            results/eval/stage2/cir_mh/fashioniq_rankings.parquet \\
        --bootstrap '{"samples": 1000, "seed": 0}' --data synthetic --run-name default \\
        --md results/tables/table3.md --csv results/tables/table3.csv --tex results/tables/table3.tex \\
        --differences results/tables/table3_differences.csv

Table 6 takes experiments.table6 as --spec and each variant's and its twin's evaluations, both stages:
    python workflow_scripts/make_results.py table6 --spec '{"variants": ["cir_mh"]}' \
        --results results/eval/stage{1,2}/cir_mh{,_unfiltered}/{fashioniq,enhfashioniq}.json \
        --rankings results/eval/stage{1,2}/cir_mh{,_unfiltered}/{fashioniq,enhfashioniq}_rankings.parquet \
        --bootstrap '{"samples": 1000, "seed": 0}' --data synthetic --run-name default \
        --md results/tables/table6.md --csv results/tables/table6.csv --tex results/tables/table6.tex \
        --differences results/tables/table6_differences.csv
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.results import experiments as ex  # noqa: E402
from fashionblip2.results.tables import Bootstrap, Evaluations  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging, table_files  # noqa: E402

log = logging.getLogger("make_results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table3", "table4", "table5", "table6", "figure5", "figure6"])
    parser.add_argument("--spec", required=True, help="JSON: the config entry of this table or figure")
    parser.add_argument("--variants", help="JSON: the settings of Table 5's variants")
    parser.add_argument(
        "--results", nargs="+", required=True, help="evaluation summaries (<dataset>.json): every seed's, last and best"
    )
    parser.add_argument("--rankings", nargs="+", required=True, help="their per-query rankings, in the same order")
    parser.add_argument("--bootstrap", required=True, help='JSON: {"samples": N, "seed": S} (evaluation.bootstrap)')
    parser.add_argument("--manifest", help="figure6: the manifest (image paths)")
    add_provenance_arguments(parser)
    # The files depend on what is made: checked below, per kind, rather than required of all.
    parser.add_argument("--md", help="tables: the Markdown table")
    parser.add_argument("--csv", help="tables and figure5: the numbers (CSV)")
    parser.add_argument("--tex", help="tables: the LaTeX table")
    parser.add_argument("--differences", help="tables and figure5: the paired differences (CSV)")
    parser.add_argument("--out", help="figures: the PNG")
    args = parser.parse_args()
    needs = {"figure5": ("out", "csv", "differences"), "figure6": ("out",)}.get(
        args.what, ("md", "csv", "tex", "differences")
    )
    missing = [f"--{n}" for n in needs if getattr(args, n) is None]
    if missing:
        parser.error(f"{args.what} needs {' '.join(missing)}")
    setup_logging()
    spec = json.loads(args.spec)
    evals = Evaluations.load(args.results, args.rankings, Bootstrap(**json.loads(args.bootstrap)))
    origin = ex.Origin(args.data, args.run_name)
    files = table_files(args, {ex.DIFFERENCES: "differences"}) if args.what.startswith("table") else None
    if args.what == "table3":
        ex.write_table3(evals, spec, origin, files)
    elif args.what == "table4":
        ex.write_table4(evals, spec, origin, files)
    elif args.what == "table5":
        if args.variants is None:
            parser.error("table5 needs --variants")
        ex.write_table5(evals, spec, json.loads(args.variants), origin, files)
    elif args.what == "table6":
        ex.write_table6(evals, spec, origin, files)
    elif args.what == "figure5":
        variants = [tuple(v) for v in spec["variants"]]
        ex.write_figure5(evals, variants, spec["caption"], origin, args.out, args.csv, args.differences)
    else:
        ex.write_figure6(evals, spec, pd.read_parquet(args.manifest), origin, args.out)
    log.info("wrote %s", args.md or args.out)


if __name__ == "__main__":
    run_main(main)
