#!/usr/bin/env python
"""Build the embedded default's word-level tokenizer on the training texts: product texts of the
general images, FACap's modification texts and captions, and FashionIQ's training captions
(never its validation captions). Saved in Hugging Face format.

Example:
    python workflow_scripts/train_tokenizer.py --manifest data/manifest/images.parquet --facap data/facap \\
        --fashioniq-triplets data/manifest/fashioniq_triplets.parquet --vocab-size 1000 --max-length 64 \\
        --out models/tokenizer
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import atomic_directory  # noqa: E402
from fashionblip2.common.issues import InputReport  # noqa: E402
from fashionblip2.datasets.triplets import pretraining_pairs, read_facap  # noqa: E402
from fashionblip2.model.tokenization import train_word_level  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402

log = logging.getLogger("train_tokenizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--facap", required=True, help="the FACap folder")
    parser.add_argument("--fashioniq-triplets", required=True, help="the manifest's FashionIQ triplets (Parquet)")
    parser.add_argument("--vocab-size", required=True, type=int)
    parser.add_argument("--max-length", required=True, type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup_logging()
    manifest = pd.read_parquet(args.manifest)
    _, product_texts = pretraining_pairs(manifest)
    facap = read_facap(args.facap, manifest, InputReport())
    fiq = pd.read_parquet(args.fashioniq_triplets)
    fiq_texts = [c for captions in fiq.loc[fiq["split"] == "train", "captions"] for c in captions]
    corpus = product_texts + [t[0] for t in facap.texts] + list(facap.target_caption) + fiq_texts
    tokenizer = train_word_level(corpus, args.vocab_size, args.max_length)
    with atomic_directory(args.out) as tmp:
        tokenizer.save_pretrained(tmp)
    log.info("tokenizer: %d tokens from %d texts -> %s", len(tokenizer), len(corpus), args.out)


if __name__ == "__main__":
    run_main(main)
