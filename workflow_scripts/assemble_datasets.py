#!/usr/bin/env python
"""Assemble FACap (released layout, with a data card) or enhFashionIQ (FashionIQ's caption format)
from the pairs, captions and modification texts; each triplet carries its scores.

Examples:
    ANNOTATION='{"caption": {"backend": "metadata", "model": ""}, "modification": {"backend": "rules"}}'
    python workflow_scripts/assemble_datasets.py facap --pairs data/pairs/pairs.parquet \\
        --captions data/annotation/captions.parquet --modifications data/annotation/modifications.parquet \\
        --scores data/scores/triplets.parquet --sources '["fashion200k", "deepfashion_mm", "catalogue"]' \\
        --annotation "$ANNOTATION" \\
        --leakage data/leakage/leakage.json --leakage-action drop \\
        --data synthetic --run-name default --out data/facap
    python workflow_scripts/assemble_datasets.py enhfashioniq --pairs data/pairs/pairs.parquet \\
        --modifications data/annotation/modifications.parquet --scores data/scores/triplets.parquet \\
        --fashioniq-root data/synthetic/world/fashioniq \\
        --annotation "$ANNOTATION" --data synthetic --run-name default --out data/enhfashioniq
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.datasets.assembly import assemble_enhfashioniq, assemble_facap  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["facap", "enhfashioniq"])
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--captions", help="facap: the gathered captions")
    parser.add_argument("--modifications", required=True)
    parser.add_argument("--scores", required=True, help="the triplet scores (Parquet): columns of the released rows")
    parser.add_argument(
        "--sources",
        help="facap: JSON list of the sources it is built from (facap.sources)",
    )
    parser.add_argument("--leakage", help="facap: the leakage rule's summary (JSON)")
    parser.add_argument("--leakage-action", choices=["report", "drop", "fail"], help="facap: leakage.action")
    parser.add_argument("--fashioniq-root", help="enhfashioniq: the FashionIQ folder (its image_splits are copied)")
    parser.add_argument("--annotation", required=True, help="the config's annotation section (JSON), for the data card")
    add_provenance_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    setup_logging()
    annotation = json.loads(args.annotation)
    card = {
        "dataset": args.dataset,
        "caption_backend": {k: annotation["caption"].get(k) for k in ("backend", "model", "model_path")},
        # planted_errors: the rules differ's wrong-on-purpose rates (absent for the other backends).
        "modification_backend": {
            **{k: annotation["modification"].get(k) for k in ("backend", "model")},
            **{k: v for k, v in annotation["modification"].items() if k == "planted_errors"},
        },
        "provenance": provenance(args.data, args.run_name),
    }
    pairs, modifications = pd.read_parquet(args.pairs), pd.read_parquet(args.modifications)
    scores = pd.read_parquet(args.scores)
    if args.dataset == "facap":
        if not (args.sources and args.leakage and args.leakage_action):
            parser.error("facap needs --sources, --leakage and --leakage-action")
        card = assemble_facap(
            pairs,
            pd.read_parquet(args.captions),
            modifications,
            scores,
            json.loads(args.sources),
            args.out,
            card,
            json.loads(Path(args.leakage).read_text()),
            args.leakage_action,
        )
    else:
        card = assemble_enhfashioniq(pairs, modifications, scores, args.fashioniq_root, args.out, card)
    logging.getLogger("assemble_datasets").info("%s: %d triplets", args.dataset, card["triplets"])


if __name__ == "__main__":
    run_main(main)
