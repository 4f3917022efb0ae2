#!/usr/bin/env python
"""The paid-run pilot, before the full annotation run.

    sample  a seeded sample of the pairs (pilot.pairs, pilot.seed); annotate.py then captions its
            images and writes its modification texts with the full run's backends, settings and
            result cache, so the full run does not pay for these answers again
    table   the pilot's statistics against the paper's Table 1 FACap rows, a pass/warn per line,
            the pilot's cost and the projected cost of the rest (results/tables/pilot.md, .csv)

Examples:
    python workflow_scripts/run_pilot.py sample --pairs data/pairs/pairs.parquet \\
        --pilot '{"budget_usd": 0, "length_tolerance": 0.3, "pairs": 100, "seed": 0}' --out data/pilot/pairs.parquet
    python workflow_scripts/run_pilot.py table --pairs data/pairs/pairs.parquet \\
        --manifest data/manifest/images.parquet --pilot-pairs data/pilot/pairs.parquet \\
        --captions data/pilot/captions.parquet --modifications data/pilot/modifications.parquet \\
        --caption-settings '{"backend": "metadata", "max_new_tokens": 128, "max_words": 150, "temperature": 0.2}' \\
        --modification-settings '{"backend": "rules", "max_new_tokens": 96, "max_words": 60, "temperature": 0.2}' \\
        --caption-prompt prompts/caption.yaml --modification-prompt prompts/modification.yaml \\
        --limits '{"caption": 0.02, "modification": 0.2}' \\
        --prices '{"image_tokens": 85, "input_per_million": 0.15, "output_per_million": 0.6}' \\
        --pilot '{"budget_usd": 0, "length_tolerance": 0.3, "pairs": 100, "seed": 0}' \\
        --data synthetic --run-name default --md results/tables/pilot.md --csv results/tables/pilot.csv
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.annotation.pilot import StageSummary, pilot_table, sample_pairs  # noqa: E402
from fashionblip2.annotation.pricing import Prices  # noqa: E402
from fashionblip2.annotation.prompts import PromptTemplate  # noqa: E402
from fashionblip2.annotation.stages import images_to_caption, plan_captions, plan_modifications  # noqa: E402
from fashionblip2.common.io import write_parquet_atomic  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.results.writing import write_table  # noqa: E402
from fashionblip2.workflow_cli import (  # noqa: E402
    add_provenance_arguments,
    add_table_arguments,
    run_main,
    setup_logging,
    table_files,
)

log = logging.getLogger("pilot")


def table(args) -> None:
    spec = json.loads(args.pilot)
    pairs, manifest, pilot = (pd.read_parquet(p) for p in (args.pairs, args.manifest, args.pilot_pairs))
    limits = json.loads(args.limits)
    summaries = {}
    for stage, rows, full_items in (
        ("caption", args.captions, len(images_to_caption(pairs, manifest))),
        ("modification", args.modifications, len(pairs)),
    ):
        settings = json.loads(getattr(args, f"{stage}_settings"))
        template = PromptTemplate.load(getattr(args, f"{stage}_prompt"))
        frame = pd.read_parquet(rows)
        # The requests the pilot asked, rebuilt (they are deterministic) to estimate what they cost.
        if stage == "caption":
            plan = plan_captions(pilot, manifest, template, settings)
        else:
            plan = plan_modifications(pilot, summaries["caption"].frame, template, settings)
        summaries[stage] = StageSummary(stage, frame, plan.requests, full_items, settings["backend"], limits[stage])
    frame = pilot_table(
        summaries["caption"],
        summaries["modification"],
        Prices.from_config(json.loads(args.prices)),
        spec["length_tolerance"],
        spec["budget_usd"],
    )
    p = provenance(args.data, args.run_name)
    notes = [
        f"A seeded pilot of {len(pilot):,} of {len(pairs):,} pairs (pilot.pairs {spec['pairs']}, seed {spec['seed']}), "
        "annotated with the full run's backends, prompts and settings into the same result cache: the full run "
        "does not ask (nor pay for) these answers again.",
        "Lengths and vocabularies: lower-cased words split on whitespace, as Table 1 counts them. Costs are "
        "estimates (about 4 characters a token, annotation.prices, half of them for openai-batch; retries not "
        "counted); the provider's bill is the reference.",
        f"{(frame['Verdict'] == 'warn').sum()} warning(s). Data: {p['data']}; config run: {p['run_name']}; "
        f"commit: {p['commit']}.",
    ]
    write_table(frame, table_files(args), "Pilot of the paid annotation run, against Table 1 (FACap)", notes)
    for row in frame.itertuples():
        (log.warning if row.Verdict == "warn" else log.info)("%s: %s [%s]", row.Check, row.Pilot, row.Verdict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="draw the pilot's pairs")
    sample.add_argument("--pairs", required=True, help="all the pairs (Parquet)")
    sample.add_argument("--pilot", required=True, help='JSON: the pilot section {"pairs": N, "seed": S, ...}')
    sample.add_argument("--out", required=True)
    report = commands.add_parser("table", help="the pilot table")
    report.add_argument("--pairs", required=True, help="all the pairs (the full run's size)")
    report.add_argument("--manifest", required=True)
    report.add_argument("--pilot-pairs", required=True)
    report.add_argument("--captions", required=True, help="the pilot's captions (annotate.py's output)")
    report.add_argument("--modifications", required=True, help="the pilot's modification texts")
    for stage in ("caption", "modification"):
        report.add_argument(f"--{stage}-settings", required=True, help=f"JSON: annotation.{stage}'s answer settings")
        report.add_argument(f"--{stage}-prompt", required=True)
    report.add_argument("--limits", required=True, help='JSON: {"caption": max_failed_fraction, "modification": ...}')
    report.add_argument("--prices", required=True, help="JSON: annotation.prices")
    report.add_argument("--pilot", required=True, help="JSON: the pilot section")
    add_provenance_arguments(report)
    add_table_arguments(report)
    args = parser.parse_args()
    setup_logging()
    if args.command == "sample":
        spec = json.loads(args.pilot)
        chosen = sample_pairs(pd.read_parquet(args.pairs), spec["pairs"], spec["seed"])
        write_parquet_atomic(args.out, chosen)
        log.info("pilot: %d pairs", len(chosen))
    else:
        table(args)


if __name__ == "__main__":
    run_main(main)
