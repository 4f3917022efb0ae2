#!/usr/bin/env python
"""Embed one shard of the images to pair with an open_clip image encoder (L2-normalised float32).

Images that fail to decode are skipped and recorded in the shard file with the reason.

Example:
    python workflow_scripts/embed_images.py --manifest data/manifest/images.parquet \\
        --sources '["fashion200k", "deepfashion_mm", "catalogue", "fashioniq"]' --fashioniq-splits '["val"]' \\
        --shard 0 --shards 2 --model FACap-tiny-ViT --pretrained '' --precision fp32 --seed 0 \\
        --device auto --batch-size 64 --workers 2 --threads 1 --out data/embeddings/shards/0.npz
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fashionblip2.pairing.embedding import embed_images, load_image_encoder  # noqa: E402
from fashionblip2.pairing.embedding_file import EmbeddingFile, shard_bounds  # noqa: E402
from fashionblip2.workflow_cli import add_pairing_selection, run_main, selected_images, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pairing_selection(parser)
    parser.add_argument("--shard", type=int, required=True, help="which shard, from 0")
    parser.add_argument("--shards", type=int, required=True, help="how many shards in all")
    parser.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-L-14 or FACap-tiny-ViT")
    parser.add_argument("--pretrained", required=True, help="local checkpoint file; empty: random init")
    parser.add_argument("--device", required=True, help="auto, cpu or cuda[:N]")
    parser.add_argument("--precision", required=True, choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--workers", required=True, type=int, help="DataLoader processes decoding images")
    parser.add_argument("--threads", required=True, type=int, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", required=True, type=int, help="seeds a randomly initialised model")
    parser.add_argument("--out", required=True, help="output shard (.npz)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging()
    log = logging.getLogger("embed_images")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # a random-init model must be the same in every shard

    images = selected_images(args)
    start, end = shard_bounds(len(images), args.shards, args.shard)
    shard = images.iloc[start:end]
    model, preprocess = load_image_encoder(args.model, args.pretrained, args.device)
    result = embed_images(
        shard["path"].tolist(),
        model,
        preprocess,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        progress=not args.no_progress,
    )
    ids = shard["image_id"].to_numpy()
    failed = sorted(result.failures)
    EmbeddingFile(
        image_ids=ids[result.indices],
        vectors=result.vectors,
        failed_ids=ids[failed] if failed else np.zeros(0, str),
        failed_reasons=np.array([result.failures[i] for i in failed], dtype=str),
    ).save(args.out)
    log.info(
        "shard %d/%d: rows %d-%d, %d embedded, %d failed to decode",
        args.shard,
        args.shards,
        start,
        end,
        len(result.indices),
        len(failed),
    )
    for i in failed:
        log.warning("skipped %s: %s", ids[i], result.failures[i])


if __name__ == "__main__":
    run_main(main)
