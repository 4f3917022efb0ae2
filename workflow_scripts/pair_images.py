#!/usr/bin/env python
"""Pair every image with one partner drawn among its top-k most similar images of other items in
the same source and category (exact cosine similarity), and write the similarity distribution
of the chosen pairs per group.

Example:
    python workflow_scripts/pair_images.py --manifest data/manifest/images.parquet \\
        --embeddings data/embeddings/images.npz \\
        --sources '["fashion200k", "deepfashion_mm", "catalogue", "fashioniq"]' --fashioniq-splits '["val"]' \\
        --top-k 20 --seed 0 --engine blocked --block 8192 --data synthetic --run-name default \\
        --pairs data/pairs/pairs.parquet --report data/pairs/report.json
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


from fashionblip2.common.io import write_json_atomic, write_parquet_atomic  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.pairing.embedding_file import EmbeddingFile  # noqa: E402
from fashionblip2.pairing.topk import (  # noqa: E402
    CHOICE,
    ENGINES,
    align_embeddings,
    pair_groups,
    similarity_summary,
)
from fashionblip2.workflow_cli import (  # noqa: E402
    add_pairing_selection,
    add_provenance_arguments,
    run_main,
    selected_images,
    setup_logging,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pairing_selection(parser)
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--top-k", required=True, type=int, help="the partner is drawn among this many neighbours")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--engine", required=True, choices=ENGINES, help="exact search engine")
    parser.add_argument("--block", required=True, type=int, help="rows per block of the blocked engine")
    add_provenance_arguments(parser)
    parser.add_argument("--pairs", required=True, help="output: the pairs (Parquet)")
    parser.add_argument("--report", required=True, help="output: counts and similarity distributions (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging()
    log = logging.getLogger("pair_images")

    images = selected_images(args)
    emb = EmbeddingFile.load(args.embeddings)
    images, vectors, skipped = align_embeddings(
        images, emb.image_ids, emb.vectors, emb.failed_ids, where=f"{args.manifest} vs {args.embeddings}"
    )
    pairs, groups = pair_groups(
        images,
        vectors,
        top_k=args.top_k,
        seed=args.seed,
        engine=args.engine,
        block=args.block,
        progress=not args.no_progress,
    )
    write_parquet_atomic(args.pairs, pairs)
    report = {
        "pairs": int(len(pairs)),
        "images": int(len(images) + len(skipped)),
        "skipped_no_embedding": skipped["image_id"].tolist(),
        "groups": {
            f"{g.source}/{g.category}": {"images": g.images, "paired": g.paired, "unpaired": g.images - g.paired}
            for g in groups
        },
        "unpaired": int(sum(g.images - g.paired for g in groups)),
        "similarity": similarity_summary(pairs),
        "top_k": args.top_k,
        "seed": args.seed,
        "engine": args.engine,
        "choice": CHOICE,
        "provenance": provenance(args.data, args.run_name),
    }
    write_json_atomic(args.report, report)
    log.info(
        "%d pairs from %d images in %d groups; %d unpaired, %d without embedding",
        len(pairs),
        report["images"],
        len(groups),
        report["unpaired"],
        len(skipped),
    )
    for name, g in report["groups"].items():
        if g["unpaired"]:
            log.warning("%s: %d image(s) without a partner (fewer than 2 items in the group)", name, g["unpaired"])


if __name__ == "__main__":
    run_main(main)
