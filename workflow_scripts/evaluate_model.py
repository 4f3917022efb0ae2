#!/usr/bin/env python
"""Evaluate a trained FashionBLIP-2 with the FashionIQ protocol on FashionIQ val and enhFashionIQ.

Each category's gallery (FashionIQ's val image split; enhFashionIQ uses the same) is encoded once;
queries are searched by exact inner product (FAISS). Writes, per dataset, ``<dataset>.json``
(R@10, R@50 per category, means, Avg, the chance level, skip counts, provenance) and
``<dataset>_rankings.parquet`` (per query: text, top 10, the target's rank). Missing images are
skipped and counted.

Example:
    python workflow_scripts/evaluate_model.py --model models/stage2/cir_mh --manifest data/manifest/images.parquet \\
        --fashioniq-root data/raw/fashioniq --enhfashioniq data/enhfashioniq --out-dir results/eval/stage2/cir_mh
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.cli_utils import run_main, setup_logging  # noqa: E402
from fashionblip2.common.io import write_json_atomic, write_parquet_atomic  # noqa: E402
from fashionblip2.common.issues import InputReport  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.common.runtime import resolve_device, set_threads  # noqa: E402
from fashionblip2.datasets.triplets import read_fashioniq_split, read_gallery  # noqa: E402
from fashionblip2.evaluation.retrieval import encode_gallery, evaluate_queries  # noqa: E402
from fashionblip2.model import FashionBLIP2  # noqa: E402
from fashionblip2.model.processing import ImageStore  # noqa: E402
from fashionblip2.model.tokenization import load_tokenizer  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402

log = logging.getLogger("evaluate_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained model folder (with its tokenizer)")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--fashioniq-root", required=True)
    parser.add_argument("--enhfashioniq", help="the enhFashionIQ folder (omit to evaluate FashionIQ only)")
    parser.add_argument("--categories", default='["dress", "shirt", "toptee"]')
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--run-name", default="manual")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    setup_logging()
    set_threads(args.threads)
    device = resolve_device(args.device, "evaluation.device")
    categories = json.loads(args.categories)
    manifest = pd.read_parquet(args.manifest)
    available = set(manifest["image_id"])
    model = FashionBLIP2.from_pretrained(args.model).to(device).eval()
    tokenizer = load_tokenizer(args.model)
    store = ImageStore(manifest_paths(manifest), model.config.blip2_config().vision_config.image_size)
    gallery_report = InputReport()
    galleries = {c: read_gallery(args.fashioniq_root, c, "val", available, gallery_report) for c in categories}
    vectors = {
        c: encode_gallery(model, store, keys, device, args.batch_size, progress=True) for c, keys in galleries.items()
    }
    training = json.loads((Path(args.model) / "training.json").read_text())
    datasets = {"fashioniq": args.fashioniq_root}
    if args.enhfashioniq:
        datasets["enhfashioniq"] = args.enhfashioniq
    for name, root in datasets.items():
        report = InputReport()
        data = read_fashioniq_split(root, "val", categories, available, report, source=name)
        results, rankings = evaluate_queries(model, store, tokenizer, data, galleries, vectors, device, progress=True)
        results |= {
            "dataset": name,
            "model": args.model,
            "variant": training.get("name"),
            "stage": training.get("stage"),
            "skipped": {"queries": report.summary(), "gallery": gallery_report.summary()},
            "provenance": provenance(args.data, args.run_name),
        }
        out = Path(args.out_dir)
        write_parquet_atomic(out / f"{name}_rankings.parquet", rankings)
        write_json_atomic(out / f"{name}.json", results)
        log.info("%s: %s (chance %s)", name, results["summary"], results["chance"])


if __name__ == "__main__":
    run_main(main)
