"""The FashionIQ evaluation protocol, as SPRC and CLIP4Cir run it.

Per category: the gallery is the category's validation split; each query is a reference image and
its two relative captions joined as "<c1 stripped of '.?, ' and capitalised> and <c2 stripped>";
the reference image is *not* removed from the ranking. Recall@K is the share of queries whose
target is among the K most similar gallery images, in percent; the summary reports R@10 and R@50
per category, their means, and Avg = (mean R@10 + mean R@50) / 2.

**One ordering, one tie rule.** SPRC (``compute_fiq_val_metrics`` in its ``src/validate_blip.py``)
sorts the gallery once per query (``torch.argsort(1 - similarity)``) and counts a hit at K when the
target's name is among the first K sorted names: a tie is broken by the sort order, not in the
target's favour. Its ``argsort`` is not stable (the order of equal values is left to the sort); we
make that order defined: a stable sort by descending score, equal scores in gallery order (the
order of the split file, as SPRC's ``index_names``). The saved top ids, the target's rank and every
hit@K are read from that one ordering (:func:`rank_gallery`), so ``hit@K == (rank <= K)`` for every
query. (Ties are real: the same image under two ids gives two equal vectors. A rank that counted
them in the target's favour beside hits from FAISS's own top K disagreed on such a twin at the K-th
place.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

KS = (10, 50)

# Scores held at once while ordering (queries x gallery, float64): ~32 MiB, whatever the set's size.
_CHUNK_SCORES = 4_000_000


def _twins(gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The gallery's distinct vectors (first occurrences, in order) and, if some repeat, where each
    gallery item's vector sits among them. Hashing the rows' bytes: np.unique(axis=0) sorts them,
    seconds for a FashionIQ gallery."""
    rows = np.ascontiguousarray(gallery)
    seen: dict[bytes, int] = {}
    keep: list[int] = []
    inverse = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        inverse[i] = seen.setdefault(row.tobytes(), len(keep))
        if inverse[i] == len(keep):
            keep.append(i)
    return (rows, None) if len(keep) == len(rows) else (rows[keep], inverse)


def _orders(queries: np.ndarray, gallery: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Each block of queries with its gallery order (best first), the protocol's order.

    Scores are inner products in float64 (float32 embeddings multiply exactly there, so less
    rounding is left to reorder near-equal scores from one BLAS to another). Byte-identical gallery
    vectors are scored once and share that score: a BLAS may round the same dot product differently
    in different columns, which would turn a true tie into a coin flip of the kernel."""
    distinct, inverse = _twins(np.asarray(gallery))
    distinct_t = distinct.astype(np.float64).T
    step = max(1, _CHUNK_SCORES // max(1, len(gallery)))
    for start in range(0, len(queries), step):
        block = slice(start, min(start + step, len(queries)))
        scores = np.asarray(queries[block], dtype=np.float64) @ distinct_t
        if inverse is not None:
            scores = scores[:, inverse]
        # Stable sort of the negated scores: descending score, equal scores in gallery order.
        yield block, np.argsort(-scores, axis=1, kind="stable")


def rank_gallery(
    queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``top`` gallery indices per query (n, min(top, gallery)) and each target's 1-based
    rank in the whole gallery (n,), both from the one ordering of the module's tie rule."""
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(targets)} targets")
    first = np.zeros((len(queries), min(top, len(gallery))), dtype=np.int64)
    ranks = np.zeros(len(queries), dtype=np.int64)
    for block, order in _orders(queries, gallery):
        first[block] = order[:, : first.shape[1]]
        ranks[block] = np.argmax(order == targets[block, None], axis=1) + 1
    return first, ranks


def retrieve(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top-k gallery items per query by exact inner product, in the protocol's order
    (equal scores in gallery order, as :func:`rank_gallery` ranks them)."""
    first = np.zeros((len(queries), min(k, len(gallery))), dtype=np.int64)
    for block, order in _orders(queries, gallery):
        first[block] = order[:, : first.shape[1]]
    return first


def hits_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Whether each query's target is among the first k: read from its rank, so the two never differ."""
    return np.asarray(ranks) <= k


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K in percent from the targets' 1-based ranks (see :func:`rank_gallery`)."""
    return {f"R@{k}": float(hits_at_k(ranks, k).mean() * 100) for k in ks}


def fashioniq_summary(per_category: dict[str, dict[str, float]], ks: Sequence[int] = KS) -> dict[str, float]:
    """Means over categories of each R@K, and Avg = the mean of those means."""
    means = {f"mean R@{k}": float(np.mean([r[f"R@{k}"] for r in per_category.values()])) for k in ks}
    return {**means, "Avg": float(np.mean(list(means.values())))}
