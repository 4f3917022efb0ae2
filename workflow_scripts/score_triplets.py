#!/usr/bin/env python
"""Score every triplet (FACap's and enhFashionIQ's): caption faithfulness, modification grounding,
discriminative power and form (definitions: fashionblip2/quality/triplet_scores.py). The model is
the workflow's image-text backbone; the shortlists are the pairing's, rebuilt from its embeddings.
No paid call.

Example:
    python workflow_scripts/score_triplets.py --pairs data/pairs/pairs.parquet \\
        --captions data/annotation/captions.parquet --modifications data/annotation/modifications.parquet \\
        --manifest data/manifest/images.parquet --embeddings data/embeddings/images.npz \\
        --backbone models/backbone --tokenizer models/tokenizer --max-text-length 64 \\
        --settings '{"reference_images": 256, "seed": 0, "min_words": 3, "max_words": 60, "top_k": 20,
                     "engine": "blocked", "block": 8192}' --device auto --batch-size 64 --threads 2 \\
        --out data/scores/triplets.parquet
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.io import write_parquet_atomic  # noqa: E402
from fashionblip2.common.runtime import resolve_device, set_threads  # noqa: E402
from fashionblip2.model.image_text import ImageTextModel  # noqa: E402
from fashionblip2.pairing.embedding_file import EmbeddingFile  # noqa: E402
from fashionblip2.pairing.topk import align_embeddings, shortlists  # noqa: E402
from fashionblip2.quality.triplet_scores import SCORES, FormSettings, ScoreSettings, score_triplets  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402

log = logging.getLogger("score_triplets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--captions", required=True)
    parser.add_argument("--modifications", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--embeddings", required=True, help="the pairing's image embeddings (its shortlists)")
    parser.add_argument("--backbone", required=True, help="a BLIP-2 retrieval checkpoint folder")
    parser.add_argument("--tokenizer", required=True, help="its tokenizer folder")
    parser.add_argument("--max-text-length", required=True, type=int)
    parser.add_argument(
        "--settings",
        required=True,
        help="JSON: reference_images, seed, min_words, max_words, top_k, engine, block",
    )
    parser.add_argument("--device", required=True, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--threads", required=True, type=int, help="CPU threads (the job's)")
    parser.add_argument("--out", required=True, help="the scores (Parquet)")
    args = parser.parse_args()
    setup_logging()
    set_threads(args.threads)
    raw = json.loads(args.settings)
    settings = ScoreSettings(
        reference_images=raw["reference_images"],
        seed=raw["seed"],
        form=FormSettings(raw["min_words"], raw["max_words"]),
        top_k=raw["top_k"],
        engine=raw["engine"],
        block=raw["block"],
    )
    manifest = pd.read_parquet(args.manifest)
    emb = EmbeddingFile.load(args.embeddings)
    embedded = manifest[manifest["image_id"].isin(set(emb.image_ids.tolist()))]
    images, vectors, _ = align_embeddings(
        embedded, emb.image_ids, emb.vectors, emb.failed_ids, where=f"{args.manifest} vs {args.embeddings}"
    )
    shortlist = shortlists(images, vectors, top_k=settings.top_k, engine=settings.engine, block=settings.block)
    model = ImageTextModel(
        args.backbone,
        args.tokenizer,
        dict(zip(manifest["image_id"], manifest["path"], strict=True)),
        device=resolve_device(args.device, "scores.device"),
        batch_size=args.batch_size,
        max_text_length=args.max_text_length,
    )
    scores = score_triplets(
        pd.read_parquet(args.pairs),
        pd.read_parquet(args.captions),
        pd.read_parquet(args.modifications),
        manifest,
        shortlist,
        model,
        settings,
    )
    write_parquet_atomic(args.out, scores)
    for dataset, group in scores.groupby("dataset"):
        summary = ", ".join(f"{s} median {group[s].median():.3f}" for s in SCORES)
        log.info("%s: %d triplets scored (%s)", dataset, len(group), summary)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_main(main)
