"""The FashionIQ evaluation protocol, as SPRC and CLIP4Cir run it.

Per category: the gallery is the category's validation split; each query is a reference image and
its two relative captions joined as "<c1 stripped of '.?, ' and capitalised> and <c2 stripped>";
the reference image is *not* removed from the ranking. Recall@K is the share of queries whose
target is among the K most similar gallery images, in percent; the summary reports R@10 and R@50
per category, their means, and Avg = (mean R@10 + mean R@50) / 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (10, 50)


def retrieve(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top-k gallery items per query by exact inner product (FAISS IndexFlatIP)."""
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, gallery.shape[0]))
    return idx


def recall_at_k(top: np.ndarray, targets: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K in percent from ranked gallery indices (n, >= max K) and target indices (n,)."""
    hit = top == np.asarray(targets)[:, None]
    return {f"R@{k}": float(hit[:, :k].any(axis=1).mean() * 100) for k in ks}


def fashioniq_summary(per_category: dict[str, dict[str, float]], ks: Sequence[int] = KS) -> dict[str, float]:
    """Means over categories of each R@K, and Avg = the mean of those means."""
    means = {f"mean R@{k}": float(np.mean([r[f"R@{k}"] for r in per_category.values()])) for k in ks}
    return {**means, "Avg": float(np.mean(list(means.values())))}
