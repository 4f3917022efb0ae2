#!/usr/bin/env python
"""Evaluation speed: the gallery encoded once and searched through FAISS, against scoring every
(query, candidate) pair through the model's similarity function, side by side in one run.

The setting is FashionIQ shirt val: a gallery of 6,346 images and 2,038 queries, with the tiny
models on CPU (random weights: the speed does not depend on them). The pairwise baseline is
timed on a few queries and scaled to all of them (it would take hours); both give the same
ranking for those queries (checked).

    python benchmarks/eval_retrieval.py
    python benchmarks/eval_retrieval.py --gallery 1000 --queries 200 --baseline-queries 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import report  # noqa: E402

from fashionblip2.evaluation.protocol import retrieve  # noqa: E402
from fashionblip2.model import FashionBLIP2, FashionBLIP2Config  # noqa: E402


@torch.no_grad()
def encode(model, pixels, batch=64):
    return torch.cat([model.gallery_embedding(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]).numpy()


@torch.no_grad()
def pairwise_scores(model, ref, ids, mask, gallery_pixels, batch=64):
    """One query against every candidate, each candidate run through the model with the query
    (what a model without an exportable embedding must do)."""
    q_heads = model.heads_of(model.query_tokens_fused(ref[None], ids[None], mask[None]))
    scores = []
    for i in range(0, len(gallery_pixels), batch):
        c_heads = model.heads_of(model.candidate_tokens(gallery_pixels[i : i + batch]))
        scores.append(model.similarity(q_heads.expand(len(c_heads), -1, -1), c_heads))
    return torch.cat(scores).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=6346)
    parser.add_argument("--queries", type=int, default=2038)
    parser.add_argument("--baseline-queries", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/out/eval_retrieval.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = FashionBLIP2(FashionBLIP2Config()).eval()
    size = model.config.blip2_config().vision_config.image_size
    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(args.gallery, 3, size, size, generator=g)
    refs = torch.randn(args.queries, 3, size, size, generator=g)
    ids = torch.randint(5, 1000, (args.queries, 16), generator=g)
    mask = torch.ones_like(ids)

    t = time.perf_counter()
    g_vec = encode(model, gallery)
    with torch.no_grad():
        q_vec = torch.cat(
            [
                model.query_embedding(refs[i : i + 64], ids[i : i + 64], mask[i : i + 64])
                for i in range(0, len(refs), 64)
            ]
        ).numpy()
    top = retrieve(q_vec, g_vec, 50)
    ours = time.perf_counter() - t

    t = time.perf_counter()
    checked = []
    for i in range(args.baseline_queries):
        scores = pairwise_scores(model, refs[i], ids[i], mask[i], gallery)
        checked.append(np.array_equal(np.argsort(-scores, kind="stable")[:10], top[i, :10]))
    per_query = (time.perf_counter() - t) / args.baseline_queries
    baseline = per_query * args.queries
    result = {
        "gallery": args.gallery,
        "queries": args.queries,
        "threads": torch.get_num_threads(),
        "encode_once_and_faiss_s": ours,
        "pairwise_model_scoring_s_per_query": per_query,
        "pairwise_model_scoring_s_estimated": baseline,
        "baseline_queries_timed": args.baseline_queries,
        "speedup": baseline / ours,
        "same_top10_on_timed_queries": all(checked),
    }
    rows = [
        ("gallery / queries", f"{args.gallery} / {args.queries}"),
        ("encode once + FAISS", f"{ours:.1f} s"),
        (
            "pairwise through the model",
            f"{baseline:.0f} s (estimated from {args.baseline_queries} queries, {per_query:.2f} s each)",
        ),
        ("speed-up", f"{baseline / ours:.1f}x"),
        ("same top-10 (timed queries)", str(all(checked))),
    ]
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
