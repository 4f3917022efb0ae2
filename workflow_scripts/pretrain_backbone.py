#!/usr/bin/env python
"""Pretrain the embedded default's "general-domain" BLIP-2: a tiny BLIP-2 trained from scratch
with BLIP-2's image-text contrastive objective on the general images (every source but FashionIQ)
and their product texts. Saved as a BLIP-2 retrieval checkpoint folder, the format of the real ones.
A killed run resumes from its checkpoint.

Example:
    python workflow_scripts/pretrain_backbone.py --manifest data/manifest/images.parquet \\
        --tokenizer models/tokenizer --image-size 64 --max-text-length 64 \\
        --recipe '{"steps": 400, "batch_size": 32, "lr": 0.001, "warmup_steps": 20, "seed": 0, "precision": "fp32"}' \\
        --job-options '{"cache_image_features": true, "device": "auto", "gradient_checkpointing": false}' \\
        --checkpoints checkpoints/backbone --threads 1 --data synthetic --run-name default --out models/backbone
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.common.runtime import seed_everything, set_threads  # noqa: E402
from fashionblip2.datasets.triplets import pretraining_pairs  # noqa: E402
from fashionblip2.model.configuration import tiny_blip2_config  # noqa: E402
from fashionblip2.model.pretraining import Blip2ImageTextContrastive  # noqa: E402
from fashionblip2.model.processing import ImageStore  # noqa: E402
from fashionblip2.model.tokenization import load_tokenizer  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402
from fashionblip2.training.runs import (  # noqa: E402
    run_info,
    save_run,
    train_backbone,
    train_config,
)
from fashionblip2.workflow_cli import add_training_arguments, run_main, setup_logging  # noqa: E402

log = logging.getLogger("pretrain_backbone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder")
    parser.add_argument("--image-size", required=True, type=int)
    parser.add_argument("--max-text-length", required=True, type=int)
    add_training_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    set_threads(args.threads)
    cfg = train_config(json.loads(args.recipe), json.loads(args.job_options))
    manifest = pd.read_parquet(args.manifest)
    keys, texts = pretraining_pairs(manifest)
    if len(keys) < cfg.batch_size:
        raise SystemExit(f"{args.manifest}: {len(keys)} images with a product text, fewer than a batch")
    tokenizer = load_tokenizer(args.tokenizer)
    seed_everything(cfg.seed)
    model = Blip2ImageTextContrastive(tiny_blip2_config(vocab_size=len(tokenizer), image_size=args.image_size))
    log.info("pretraining on %d image-text pairs for %d steps", len(keys), cfg.steps)
    train_backbone(
        model,
        keys,
        texts,
        ImageStore(manifest_paths(manifest), args.image_size),
        tokenizer,
        cfg,
        args.checkpoints,
        max_text_length=args.max_text_length,
    )
    info = run_info("pretrain", None, cfg, {"pairs": len(keys)}, provenance=provenance(args.data, args.run_name))
    save_run(model.cpu(), tokenizer, args.out, args.checkpoints, info)


if __name__ == "__main__":
    run_main(main)
