#!/usr/bin/env python
"""Build the embedded default's word-level tokenizer on the training texts: product texts of the
general images, the accepted modification texts and captions of FACap's sources' pairs, and
FashionIQ's training captions (never its validation captions, nor enhFashionIQ's texts). It reads
the annotation tables, not the FACap folder: FACap's released rows carry scores made with the
backbone that this tokenizer serves. Saved in Hugging Face format.

Example:
    python workflow_scripts/train_tokenizer.py --manifest data/manifest/images.parquet \\
        --pairs data/pairs/pairs.parquet --captions data/annotation/captions.parquet \\
        --modifications data/annotation/modifications.parquet --facap-sources '["fashion200k", "deepfashion_mm"]' \\
        --fashioniq-triplets data/manifest/fashioniq_triplets.parquet --vocab-size 1000 --max-length 64 \\
        --out models/tokenizer
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import atomic_directory  # noqa: E402
from fashionblip2.datasets.assembly import join_annotations  # noqa: E402
from fashionblip2.datasets.triplets import pretraining_pairs  # noqa: E402
from fashionblip2.model.tokenization import train_word_level  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402

log = logging.getLogger("train_tokenizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--pairs", required=True, help="the pairs (Parquet)")
    parser.add_argument("--captions", required=True, help="the gathered captions (Parquet)")
    parser.add_argument("--modifications", required=True, help="the gathered modification texts (Parquet)")
    parser.add_argument("--facap-sources", required=True, help="JSON list: the sources FACap is built from")
    parser.add_argument("--fashioniq-triplets", required=True, help="the manifest's FashionIQ triplets (Parquet)")
    parser.add_argument("--vocab-size", required=True, type=int)
    parser.add_argument("--max-length", required=True, type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup_logging()
    manifest = pd.read_parquet(args.manifest)
    _, product_texts = pretraining_pairs(manifest)
    pairs = pd.read_parquet(args.pairs)
    pairs = pairs[pairs["source"].isin(json.loads(args.facap_sources))]
    texts = join_annotations(pairs, pd.read_parquet(args.modifications))["text"].tolist()
    captions = pd.read_parquet(args.captions)
    paired = set(pairs["reference_id"]) | set(pairs["target_id"])
    caption_texts = captions.loc[(captions["status"] == "ok") & captions["image_id"].isin(paired), "text"].tolist()
    fiq = pd.read_parquet(args.fashioniq_triplets)
    fiq_texts = [c for captions in fiq.loc[fiq["split"] == "train", "captions"] for c in captions]
    corpus = product_texts + texts + caption_texts + fiq_texts
    tokenizer = train_word_level(corpus, args.vocab_size, args.max_length)
    with atomic_directory(args.out) as tmp:
        tokenizer.save_pretrained(tmp)
    log.info("tokenizer: %d tokens from %d texts -> %s", len(tokenizer), len(corpus), args.out)


if __name__ == "__main__":
    run_main(main)
