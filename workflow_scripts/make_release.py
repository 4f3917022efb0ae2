#!/usr/bin/env python
"""Write the release folders the Hugging Face ecosystem loads: release/facap (FACap as Parquet
shards with its dataset card) and release/model/<variant> per model folder (weights, config,
tokenizer, processor config and model card with the variant's rows of the result tables). Every
input is checked before anything is written; each folder is replaced whole. Nothing is uploaded.

Example:
    python workflow_scripts/make_release.py --facap data/facap --manifest data/manifest/images.parquet \\
        --source-roots '{"fashion200k": "data/raw/fashion200k", "deepfashion_mm": "data/raw/deepfashion_mm"}' \\
        --models models/stage2/cir_mh --stage1-models models/stage1/cir_mh \\
        --tables results/tables/table3.csv results/tables/table4.csv results/tables/table5.csv \\
        --namespace '' --facap-out release/facap --model-out release/model
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.release.dataset import prepare_facap, write_facap_release  # noqa: E402
from fashionblip2.release.model import prepare_model, write_model_release  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402

log = logging.getLogger("fashionblip2.release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facap", required=True, help="the FACap folder (triplets.parquet, data_card.json)")
    parser.add_argument("--manifest", required=True, help="the image manifest (each image's file)")
    parser.add_argument(
        "--source-roots", required=True, help="JSON: source -> its folder (the released image paths are relative to it)"
    )
    parser.add_argument("--models", required=True, nargs="+", help="the model folders to release, one per variant")
    parser.add_argument(
        "--stage1-models",
        required=True,
        nargs="*",
        help="the stage-1 folders the stage-2 models started from, named by variant (what stage 1 trained on)",
    )
    parser.add_argument("--tables", required=True, nargs="+", help="the result tables' CSV files (table3.csv, ...)")
    parser.add_argument("--namespace", required=True, help="the Hub user or organisation the cards name ('': <user>)")
    parser.add_argument("--facap-out", required=True, help="the dataset's release folder")
    parser.add_argument("--model-out", required=True, help="the models' release folder (one sub-folder per variant)")
    args = parser.parse_args()
    setup_logging()
    roots = json.loads(args.source_roots)
    tables = {Path(p).stem: pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in args.tables}
    stage1 = {Path(p).name: p for p in args.stage1_models}
    # Everything is read and checked first: a missing row or folder stops the job before a file is written.
    facap = prepare_facap(args.facap, pd.read_parquet(args.manifest, columns=["image_id", "path", "source"]), roots)
    rows = facap.table.num_rows
    models = [prepare_model(m, tables, stage1.get(Path(m).name), args.namespace, rows) for m in args.models]
    written = write_facap_release(facap, args.facap_out, args.namespace)
    log.info("%s: %d rows in %d shard(s), %d bytes", args.facap_out, written.rows, len(written.shards), written.bytes)
    for model in models:
        out = Path(args.model_out) / model.variant
        log.info("%s: %d bytes", out, write_model_release(model, out))


if __name__ == "__main__":
    run_main(main)
