#!/usr/bin/env python
"""Index a gallery for `fashionblip2 search`: encode the chosen manifest images once with a trained
model and write a FAISS exact inner-product index with the image ids and paths.

Example:
    python workflow_scripts/build_search_index.py --model models/stage2/cir_mh \\
        --manifest data/manifest/images.parquet --sources '["fashioniq"]' --splits '["val"]' \\
        --device auto --batch-size 64 --threads 1 --out results/index/stage2/cir_mh
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.runtime import resolve_device, set_threads  # noqa: E402
from fashionblip2.evaluation.retrieval import encode_gallery, save_index  # noqa: E402
from fashionblip2.model import FashionBLIP2  # noqa: E402
from fashionblip2.model.processing import ImageStore  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402

log = logging.getLogger("build_search_index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--sources", required=True, help="JSON list of manifest sources to index")
    parser.add_argument("--splits", required=True, help="JSON list of manifest splits to index")
    parser.add_argument("--device", required=True)
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--threads", required=True, type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup_logging()
    set_threads(args.threads)
    manifest = pd.read_parquet(args.manifest)
    rows = manifest[manifest["source"].isin(json.loads(args.sources)) & manifest["split"].isin(json.loads(args.splits))]
    # FashionIQ lists some images under two categories: index each file once.
    rows = rows.drop_duplicates("path")
    if rows.empty:
        raise SystemExit("no manifest image matches --sources and --splits")
    device = resolve_device(args.device, "evaluation.device")
    model = FashionBLIP2.from_pretrained(args.model).to(device).eval()
    store = ImageStore.for_model(manifest_paths(manifest), model, cache=False)
    vectors = encode_gallery(model, store, rows["image_id"].tolist(), device, args.batch_size, progress=True)
    save_index(vectors, rows["image_id"].tolist(), rows["path"].tolist(), args.out, model=args.model)
    log.info("indexed %d images -> %s", len(rows), args.out)


if __name__ == "__main__":
    run_main(main)
