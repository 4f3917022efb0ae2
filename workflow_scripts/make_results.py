#!/usr/bin/env python
"""The paper's experiment tables and figures from the evaluation files (results/eval/<stage>/<variant>/).

    table3   FashionIQ val, without and with fine-tuning, beside the paper's rows (reported)
    table4   with and without FACap pretraining, fine-tuned; FashionIQ and enhFashionIQ
    table5   the component ablation, without and with fine-tuning, on both evaluation sets
    figure5  recall against the FACap training fraction (without fine-tuning)
    figure6  qualitative results: reference, text, top-k with the target framed, its rank

Tables are written as <stem>.md, .csv and .tex. Every output says which data, config and commit made it.

Example:
    python workflow_scripts/make_results.py table3 --spec '{"without_finetuning": "cir_ctr_mh",
        "with_finetuning": "cir_mh"}' --eval-root results/eval --out results/tables/table3
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.cli_utils import run_main, setup_logging  # noqa: E402
from fashionblip2.common.io import write_text_atomic  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.results import tables as et  # noqa: E402
from fashionblip2.results.figures import contact_sheet, qualitative_row, recall_curve  # noqa: E402
from fashionblip2.results.writing import write_table  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402

log = logging.getLogger("make_results")


def footer(args) -> str:
    p = provenance(args.data, args.run_name)
    return f"Data: {p['data']}; config run: {p['run_name']}; commit: {p['commit']}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table3", "table4", "table5", "figure5", "figure6"])
    parser.add_argument("--spec", required=True, help="JSON: the config entry of this table or figure")
    parser.add_argument("--variants", default="{}", help="JSON: experiments.variants (table5, figure5)")
    parser.add_argument("--eval-root", default="results/eval")
    parser.add_argument("--manifest", help="figure6: the manifest (image paths)")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--run-name", default="manual")
    parser.add_argument("--out", required=True, help="tables: output stem; figures: the PNG")
    args = parser.parse_args()
    setup_logging()
    spec = json.loads(args.spec)
    origin = f"this run ({args.data} data)"
    reported = (
        "Rows marked 'reported by the paper' are copied from the paper (ViT-G BLIP-2, real FashionIQ), not recomputed."
    )
    scale = (
        "Our rows come from the embedded default's tiny models on the synthetic world: compare them with each other "
        "and with the chance level, not with the paper's numbers."
        if args.data == "synthetic"
        else "Our rows: this run's models on real data."
    )
    if args.what == "table3":
        frame = et.table3(args.eval_root, spec, origin)
        notes = [
            "Recall@K in percent on FashionIQ val (two captions joined, reference not removed from the ranking); "
            "Avg = (mean R@10 + mean R@50) / 2.",
            f"Without fine-tuning: trained on FACap only ({spec['without_finetuning']}); with fine-tuning: "
            f"FACap then FashionIQ train ({spec['with_finetuning']}), as the paper's rows (Table 5).",
            et.chance_note(args.eval_root, "stage1", spec["without_finetuning"]),
            scale,
            reported,
            *et.table3_inconsistency_notes(),
            footer(args),
        ]
        write_table(frame, args.out, "Table 3: FashionIQ validation, without and with fine-tuning", notes, tex=True)
    elif args.what == "table4":
        frame = et.table4(args.eval_root, spec, origin)
        notes = [
            "Avg = (mean R@10 + mean R@50) / 2 over dress, shirt and toptee, on FashionIQ val and enhFashionIQ.",
            "Without FACap: fine-tuned on FashionIQ straight from the pretrained backbone. The SPRC-style row is our "
            "global-matching variant of FashionBLIP-2 (no adapters, one global embedding), not SPRC's code.",
            et.chance_note(args.eval_root, "stage2", spec[0]["with_facap"]),
            scale,
            reported,
            footer(args),
        ]
        write_table(frame, args.out, "Table 4: impact of FACap pretraining", notes, tex=True)
    elif args.what == "table5":
        variants = json.loads(args.variants)
        frame = et.table5(args.eval_root, spec, variants, origin)
        notes = [
            "Avg recall ((mean R@10 + mean R@50) / 2) on FashionIQ val and enhFashionIQ, after FACap only "
            "(no fine-tuning) and after fine-tuning on FashionIQ. MH: multi-head matching.",
            et.chance_note(args.eval_root, "stage1", spec[0]),
            scale,
            reported,
            footer(args),
        ]
        write_table(frame, args.out, "Table 5: ablation of FashionBLIP-2's components", notes, tex=True)
    elif args.what == "figure5":
        names = spec["variants"]  # [(fraction, variant)], from the workflow
        fractions = [f for f, _ in names]
        series, frame = et.fraction_series(args.eval_root, names)
        write_text_atomic(Path(args.out).with_suffix(".csv"), frame.to_csv(index=False))
        recall_curve(
            fractions,
            series,
            args.out,
            "Figure 5: recall without fine-tuning against the FACap training fraction",
            footer(args),
        )
    else:
        paths = manifest_paths(pd.read_parquet(args.manifest))
        rows = []
        for dataset, which in (("fashioniq", "best"), ("enhfashioniq", "best"), ("fashioniq", "worst")):
            ranks = pd.read_parquet(
                Path(args.eval_root) / spec["stage"] / spec["variant"] / f"{dataset}_rankings.parquet"
            )
            row = qualitative_row(ranks, dataset, which, paths, int(spec.get("top_k", 5)))
            if row is not None:
                rows.append(row)
        contact_sheet(rows, args.out, title=f"Figure 6: {spec['variant']} ({spec['stage']}). {footer(args)}")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
