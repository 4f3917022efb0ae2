"""Retrieval with a trained FashionBLIP-2: encode a gallery once, encode queries, rank the gallery by
exact inner product, and score a query set with the FashionIQ protocol.

The multi-head similarity is the inner product of the exported embeddings (see the model), so
the gallery is encoded once and every query is one exact inner-product ranking, instead of running
the model's similarity on each (query, candidate) pair. The saved top ids, the target's rank and its
hits all come from that one ranking (``protocol.rank_gallery``: equal scores in gallery order, as
SPRC sorts); the search index for the browser and the ``search`` command (``save_index``) is FAISS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fashionblip2.datasets.triplets import Triplets
from fashionblip2.evaluation.protocol import KS, fashioniq_summary, hits_at_k, rank_gallery, recall_at_k
from fashionblip2.model.processing import ImageStore
from fashionblip2.model.tokenization import tokenize

TOP_SAVED = 10  # retrieved ids kept per query in the rankings (for the qualitative figure)


@torch.no_grad()
def encode_gallery(
    model, store: ImageStore, keys: Sequence[str], device: torch.device, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    model.eval()
    out = []
    for i in tqdm(range(0, len(keys), batch_size), desc="gallery", unit="batch", disable=not progress):
        pixels = store.pixels(keys[i : i + batch_size]).to(device)
        out.append(model.gallery_embedding(pixels).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.heads * model.config.head_dim), np.float32)


@torch.no_grad()
def encode_queries(
    model,
    store: ImageStore,
    tokenizer,
    references: Sequence[str],
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    model.eval()
    out = []
    for i in tqdm(range(0, len(references), batch_size), desc="queries", unit="batch", disable=not progress):
        pixels = store.pixels(references[i : i + batch_size]).to(device)
        ids, mask = tokenize(tokenizer, list(texts[i : i + batch_size]), model.config.max_text_length)
        out.append(model.query_embedding(pixels, ids.to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.heads * model.config.head_dim), np.float32)


def target_ranks(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each query's target in the whole gallery, by the protocol's one tie rule
    (equal scores in gallery order: the rank is the target's place in the sorted gallery)."""
    return rank_gallery(queries, gallery, targets, 0)[1]


def evaluate_queries(
    model,
    store: ImageStore,
    tokenizer,
    data: Triplets,
    galleries: dict[str, list[str]],
    gallery_vectors: dict[str, np.ndarray],
    device: torch.device,
    ks: Sequence[int] = KS,
    progress: bool = False,
    *,
    text_cleanup: str,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Recall@K per category (FashionIQ protocol) and one ranking row per query. Each query's text is
    "c1 and c2" after ``text_cleanup`` (config ``text.cleanup``), the text its ranking row records.

    A query whose target is not in its category's gallery cannot be found; it is counted, not scored.
    """
    per_category: dict[str, dict[str, Any]] = {}
    rows = []
    for category, keys in galleries.items():
        position = {k: i for i, k in enumerate(keys)}
        idx = [i for i in range(len(data)) if data.category[i] == category]
        scored = [i for i in idx if data.target[i] in position]
        texts = [data.training_text(i, None, randomise=False, cleanup=text_cleanup) for i in scored]
        q = encode_queries(
            model, store, tokenizer, [data.reference[i] for i in scored], texts, device, progress=progress
        )
        g = gallery_vectors[category]
        targets = np.array([position[data.target[i]] for i in scored], dtype=np.int64)
        # One ordering gives the saved ids, the rank and the hits: they cannot disagree on a tie.
        top, ranks = rank_gallery(q, g, targets, TOP_SAVED)
        recalls = recall_at_k(ranks, ks) if scored else {f"R@{k}": float("nan") for k in ks}
        per_category[category] = {
            **recalls,
            "queries": len(scored),
            "gallery": len(keys),
            "target_not_in_gallery": len(idx) - len(scored),
            **{f"chance R@{k}": 100.0 * min(k, len(keys)) / max(1, len(keys)) for k in ks},
        }
        for j, i in enumerate(scored):
            rows.append(
                {
                    "category": category,
                    "reference": data.reference[i],
                    "target": data.target[i],
                    "text": texts[j],
                    "top": [keys[t] for t in top[j, :TOP_SAVED]],
                    "target_rank": int(ranks[j]),
                    # What R@K counts, read from the rank: the intervals of the tables resample these.
                    **{f"hit@{k}": bool(hits_at_k(ranks[j], k)) for k in ks},
                }
            )
    summary = fashioniq_summary({c: r for c, r in per_category.items() if r["queries"]}, ks)
    chance = fashioniq_summary(
        {c: {f"R@{k}": r[f"chance R@{k}"] for k in ks} for c, r in per_category.items() if r["queries"]}, ks
    )
    return {"categories": per_category, "summary": summary, "chance": chance}, pd.DataFrame(rows)


def save_index(
    vectors: np.ndarray,
    ids: Sequence[str],
    paths: Sequence[str],
    out_dir: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
) -> None:
    """A FAISS exact inner-product index with its ids and image paths, written as one folder, atomically;
    ``model``: the model folder the vectors come from (as given), which the browser pairs it with."""
    import faiss

    from fashionblip2.common.io import atomic_directory, dumps_json

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    with atomic_directory(out_dir) as tmp:
        faiss.write_index(index, str(tmp / "gallery.faiss"))
        meta = {"ids": list(ids), "paths": list(paths)} | ({"model": str(model)} if model is not None else {})
        (tmp / "ids.json").write_text(dumps_json(meta), encoding="utf-8")


def load_index(index_dir: str | os.PathLike[str]):
    import json

    import faiss

    index_dir = Path(index_dir)
    for name in ("gallery.faiss", "ids.json"):
        if not (index_dir / name).exists():
            raise FileNotFoundError(f"{index_dir / name}: not a gallery index (build one with the search_index rule)")
    meta = json.loads((index_dir / "ids.json").read_text())
    return faiss.read_index(str(index_dir / "gallery.faiss")), meta["ids"], meta["paths"]
