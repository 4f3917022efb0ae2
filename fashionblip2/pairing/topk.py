"""Image pairing (paper §3.1): within each (source, category) group, each image's top-20 most
similar images of *other* items by cosine similarity, then one partner drawn at random.

Two exact engines find the neighbours:

- ``blocked`` (default): the group's similarity matrix is symmetric, so each block pair (I, J),
  J >= I, is multiplied once and feeds the running top-k of both its rows and its columns. That
  is half the multiply-adds of any search that treats every image as an independent query, and
  no N x N matrix is ever held (one block of ``block`` x ``block`` similarities at a time).
- ``faiss``: FAISS ``IndexFlatIP`` exact search of the group against itself.

Every pair is a paid LLM call, so the pairs must not depend on the engine, the BLAS or the CPU.
Their float32 similarities do (summation order moves the last bits, which reorders near-equal
neighbours), so neither the top-k nor the draw is taken from them directly:

1. the engine gives a shortlist of ``top_k + the largest item's view count + SHORTLIST_MARGIN``
   neighbours (the item's own views are dropped after, so ``top_k`` others remain);
2. the shortlist is re-scored in float64 from the float32 embeddings, in a fixed summation order
   (NumPy's pairwise sum), and the top-k is the first ``top_k`` by (float64 score desc, index asc);
3. a row whose shortlist may have cut through a near-tie (its k-th and its last float32 scores
   closer than twice the proven float32 error bound) is redone against the whole group;
4. the partner is drawn from the top-k as a set in index order (``pair_groups`` orders each
   group by image id first), so a reordering inside the top-k changes nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

ENGINES = ("blocked", "faiss")
# How a partner is chosen, recorded in the pairs report: version 2 draws from the top-k as a set
# (image-id order, float64 re-scored); version 1 drew a rank. The same seed gives other partners.
CHOICE = "v2: top-k re-scored in float64, partner drawn from it as a set in image-id order"
PAIR_COLUMNS = ["reference_id", "target_id", "source", "category", "similarity", "rank", "candidates"]

# Extra shortlist places beyond the k-th. Can a near-tie at the k-th place still straddle the shortlist's end?
# Only if the shortlist's last float32 score is within twice the proven float32 error bound of the k-th valid
# one (2 x float32_dot_error = 9.2e-5 for unit vectors at d = 768; measured errors are below 1e-6), i.e. if
# SHORTLIST_MARGIN + 1 or more candidates crowd into that band. Such a row is detected and redone against its
# whole group (_exact_rows), so the margin never decides which pairs come out, only how often a row is redone.
# On the benchmark's clustered vectors (groups of 16,667 and 40,000, d = 768) neighbours near the 20th place
# are ~5e-4 to 2e-3 apart and not one row needed the redo even with no margin; 8 places keep redos rare
# where images are near-duplicates, for a quarter to a third more shortlist to fetch and re-score.
SHORTLIST_MARGIN = 8
# Rows re-scored per NumPy call: small enough that the (rows, shortlist, dim) float64 products
# stay in cache, large enough to amortise the call.
_RESCORE_ROWS = 64


def knn_blocked(x: np.ndarray, k: int, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product neighbours of every row of ``x`` among all rows (itself included).

    Returns (similarities, indices), each (n, k), sorted by decreasing similarity, ties by index.
    Each block pair (I, J), J > I, is multiplied once and updates the rows of I and of J. Each
    diagonal block is first split in two halves whose own products seed every row's top-k, so
    that the rest only merges entries above a row's current k-th value.
    """
    n = x.shape[0]
    k = min(k, n)
    x = np.ascontiguousarray(x, dtype=np.float32)
    best_val = torch.full((n, k), -math.inf)
    best_idx = torch.full((n, k), -1, dtype=torch.int64)
    size = min(block, n)
    buffers = (np.empty((size, size), np.float32), np.empty((size, size), bool), np.empty((size, size), bool))

    def product(i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        out = np.ndarray((i1 - i0, j1 - j0), np.float32, buffers[0])  # reuse one buffer: no page faults
        np.matmul(x[i0:i1], x[j0:j1].T, out=out)  # NumPy's sgemm measured faster than torch.mm here
        return out

    # Seed: the diagonal half-blocks, each against itself (a top-k over every entry).
    halves = [h for i0, i1 in iter_blocks(n, block) for h in ((i0, (i0 + i1 + 1) // 2), ((i0 + i1 + 1) // 2, i1))]
    for h0, h1 in halves:
        if h1 > h0:
            kk = min(k, h1 - h0)
            val, pos = torch.topk(torch.from_numpy(product(h0, h1, h0, h1)), kk, dim=1)
            best_val[h0:h1, :kk], best_idx[h0:h1, :kk] = val, pos + h0
    # Then every other pair once: the two halves of a diagonal block, and all off-diagonal blocks.
    blocks = list(iter_blocks(n, block))
    pairs = [
        (halves[2 * b], halves[2 * b + 1]) for b in range(len(blocks)) if halves[2 * b + 1][1] > halves[2 * b + 1][0]
    ]
    pairs += [(blocks[a], blocks[b]) for a in range(len(blocks)) for b in range(a + 1, len(blocks))]
    for (i0, i1), (j0, j1) in pairs:
        s = product(i0, i1, j0, j1)
        row_threshold, col_threshold = best_val[i0:i1, -1].numpy(), best_val[j0:j1, -1].numpy()
        # One pass finds every entry that may enter its row's or its column's top-k.
        rows_mask = np.ndarray(s.shape, bool, buffers[1])
        cols_mask = np.ndarray(s.shape, bool, buffers[2])
        np.greater(s, row_threshold[:, None], out=rows_mask)
        np.greater(s, col_threshold[None, :], out=cols_mask)
        np.logical_or(rows_mask, cols_mask, out=rows_mask)
        a, b = torch.from_numpy(rows_mask).nonzero(as_tuple=True)
        if a.numel() == 0:
            continue
        vals = torch.from_numpy(s)[a, b]
        for_rows = vals > torch.from_numpy(row_threshold)[a]
        for_cols = vals > torch.from_numpy(col_threshold)[b]
        _merge(best_val, best_idx, a[for_rows] + i0, b[for_rows] + j0, vals[for_rows])
        _merge(best_val, best_idx, b[for_cols] + j0, a[for_cols] + i0, vals[for_cols])
    return _sort_ties(best_val.numpy(), best_idx.numpy())


def _merge(
    best_val: torch.Tensor, best_idx: torch.Tensor, rows: torch.Tensor, cands: torch.Tensor, vals: torch.Tensor
) -> None:
    """Merge candidate (row, candidate, similarity) triples into the running top-k of their rows."""
    if rows.numel() == 0:
        return
    k = best_val.shape[1]
    order = torch.argsort(rows, stable=True)
    rows, cands, vals = rows[order], cands[order], vals[order]
    touched, counts = torch.unique_consecutive(rows, return_counts=True)
    # Lay each touched row's candidates out in a padded (touched, width) table, then merge by top-k.
    starts = torch.cumsum(counts, 0) - counts
    local = torch.repeat_interleave(torch.arange(touched.numel()), counts)
    slot = torch.arange(rows.numel()) - starts[local]
    width = int(counts.max())
    pad_val = torch.full((touched.numel(), width), -math.inf)
    pad_idx = torch.full((touched.numel(), width), -1, dtype=torch.int64)
    pad_val[local, slot] = vals
    pad_idx[local, slot] = cands
    merged_val = torch.cat([best_val.index_select(0, touched), pad_val], dim=1)
    merged_idx = torch.cat([best_idx.index_select(0, touched), pad_idx], dim=1)
    val, pos = torch.topk(merged_val, k, dim=1)
    best_val.index_copy_(0, touched, val)
    best_idx.index_copy_(0, touched, merged_idx.gather(1, pos))


def knn_faiss(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same neighbours through FAISS ``IndexFlatIP`` (every image a query against the group)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, min(k, x.shape[0]))
    return _sort_ties(sims, idx)


def _sort_ties(sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by decreasing similarity, then increasing index, so engines agree exactly."""
    order = np.lexsort((idx, -sims), axis=1)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)


def knn(x: np.ndarray, k: int, engine: str = "blocked", block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    if engine == "blocked":
        return knn_blocked(x, k, block)
    if engine == "faiss":
        return knn_faiss(x, k)
    raise ValueError(f"unknown pairing engine {engine!r}; expected one of {ENGINES}")


def other_item_neighbours(
    x: np.ndarray, items: np.ndarray, top_k: int, engine: str = "blocked", block: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``top_k`` neighbours of each row among rows of *other* items, the same for every engine.

    Returns (similarities, indices, counts): arrays (n, top_k) padded with -inf / -1, and the number
    of valid neighbours per row (smaller than ``top_k`` only when the group has fewer other items' images).
    Each row is ordered by (float64 similarity desc, index asc); the similarities returned are those
    float64 scores rounded to float32, so they too are the same for every engine.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    out_sims = np.full((n, top_k), -np.inf, dtype=np.float32)
    out_idx = np.full((n, top_k), -1, dtype=np.int64)
    if n == 0 or top_k <= 0:
        return out_sims, out_idx, np.zeros(n, dtype=np.int64)
    _, item_codes = np.unique(items, return_inverse=True)
    item_codes = item_codes.reshape(-1)
    largest_item = int(np.bincount(item_codes).max())
    f32, idx = knn(x, top_k + largest_item + SHORTLIST_MARGIN, engine, block)
    valid = item_codes[idx] != item_codes[:, None]
    s64 = np.where(valid, rescore_float64(x, np.arange(n), idx), -np.inf)
    take = min(top_k, idx.shape[1])
    order = np.lexsort((idx, -s64), axis=1)[:, :take]
    best = np.take_along_axis(s64, order, 1)
    out_sims[:, :take] = best
    out_idx[:, :take] = np.where(np.isfinite(best), np.take_along_axis(idx, order, 1), -1)
    counts = np.minimum(valid.sum(axis=1), top_k)
    if idx.shape[1] < n:
        # Whoever lies outside the shortlist scored (float32) at most its last entry, so it can only
        # belong to the float64 top-k if that is within twice the float32 error of the k-th valid
        # entry. The shortlist holds >= top_k valid entries, since it is top_k + largest_item + margin.
        kth_col = np.argmax(np.cumsum(valid, axis=1) >= top_k, axis=1)
        kth = f32[np.arange(n), kth_col].astype(np.float64)
        error = float32_dot_error(x)
        unsure = np.nonzero(kth - f32[:, -1] <= 2 * error)[0]
        for row, row_sims, row_idx in _exact_rows(x, item_codes, unsure, top_k, error):
            out_sims[row], out_idx[row] = row_sims, row_idx
    return out_sims, out_idx, counts


def float32_dot_error(x: np.ndarray) -> np.ndarray:
    """Per row of ``x``, a bound on |float32 x_r . x_c - float64 fixed-order x_r . x_c| over all rows c.

    Any float32 dot product of length d, in any summation order and with or without FMA (BLAS, FAISS),
    is within gamma_d * sum|x_r,i x_c,i| <= gamma_d |x_r| |x_c| of the exact value, gamma_d = d u / (1 - d u)
    with u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5); the float64
    score's own error is ~1e10 times smaller, which the factor 1.01 covers.
    """
    d = x.shape[1]
    u = 2.0**-24
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    return 1.01 * d * u / (1 - d * u) * norms * norms.max()


def rescore_float64(x: np.ndarray, rows: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Float64 inner products of ``x[rows[i]]`` with ``x[cands[i, j]]``, shape ``cands.shape``.

    Products of float32 numbers are exact in float64, and NumPy sums the contiguous last axis
    pairwise in an order fixed by the length alone (its 8-accumulator unroll is vectorised
    without reordering), so a score depends on the two vectors only: not on the BLAS, the CPU,
    the thread count or where the candidate sits in the shortlist. Exact duplicates tie exactly.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cands = np.asarray(cands, dtype=np.int64).reshape(len(rows), -1)
    out = np.empty(cands.shape, dtype=np.float64)

    def work(start: int) -> None:
        stop = min(start + _RESCORE_ROWS, len(rows))
        products = np.multiply(x[cands[start:stop]], x[rows[start:stop], None, :].astype(np.float64))
        np.sum(products, axis=-1, out=out[start:stop])

    starts = range(0, len(rows), _RESCORE_ROWS)
    threads = max(1, min(torch.get_num_threads(), len(starts)))
    if threads == 1:
        for start in starts:
            work(start)
    else:  # NumPy releases the GIL; each chunk writes its own rows, so the result is the same
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, starts))
    return out


def _exact_rows(
    x: np.ndarray, item_codes: np.ndarray, rows: np.ndarray, top_k: int, error: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The float64 top-``top_k`` of each of ``rows`` over the whole group, for shortlists too short to be sure.

    Everything within twice the float32 error of a row's float32 k-th (other-item) similarity is
    re-scored in float64: whatever lies below that is below ``top_k`` others in float64 too.
    Yields (row, similarities, indices).
    """
    for start in range(0, len(rows), _RESCORE_ROWS):
        chunk = rows[start : start + _RESCORE_ROWS]
        f = x[chunk] @ x.T
        f[item_codes[chunk][:, None] == item_codes[None, :]] = -np.inf
        kth = np.partition(f, -top_k, axis=1)[:, -top_k].astype(np.float64)
        for row, f_row, kth_row in zip(chunk, f, kth, strict=True):
            cands = np.nonzero(f_row >= kth_row - 2 * error[row])[0]
            s = rescore_float64(x, np.array([row]), cands[None, :])[0]
            order = np.lexsort((cands, -s))[:top_k]
            yield int(row), s[order].astype(np.float32), cands[order]


def draw_rank(seed: int, image_id: str, candidates: int) -> int:
    """A uniform draw in [0, candidates) that depends only on the seed and the image, not on order.

    ``pair_groups`` uses it as a position in the top-k sorted by image id, not by similarity.
    """
    digest = hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % candidates


@dataclass
class GroupResult:
    source: str
    category: str
    images: int
    paired: int


def group_neighbours(
    images: pd.DataFrame, vectors: np.ndarray, *, top_k: int, engine: str, block: int, progress: bool = True
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per (source, category) group: the manifest rows, their order by image id, the ids in that order
    and :func:`other_item_neighbours` of them (the shortlists pairing draws from, and that the
    triplet scores rank the target in)."""
    groups = list(images.groupby(["source", "category"], sort=True).indices.items())
    for (source, category), rows in tqdm(groups, desc="pairing groups", unit="group", disable=not progress):
        rows = np.sort(rows)
        # Work in image-id order, so that index order (the tie-break and the order the draw walks
        # the top-k in) does not depend on the manifest's row order either.
        by_id = np.argsort(images["image_id"].to_numpy()[rows], kind="stable")
        sub = images.iloc[rows[by_id]]
        sims, idx, counts = other_item_neighbours(vectors[rows[by_id]], sub["item_id"].to_numpy(), top_k, engine, block)
        yield str(source), str(category), rows, by_id, sub["image_id"].to_numpy(), sims, idx, counts


def shortlists(
    images: pd.DataFrame, vectors: np.ndarray, *, top_k: int, engine: str, block: int
) -> dict[str, list[str]]:
    """image id -> the ids of its top-``top_k`` other-item neighbours in its group, most similar first."""
    out: dict[str, list[str]] = {}
    for *_, ids, _sims, idx, _counts in group_neighbours(
        images, vectors, top_k=top_k, engine=engine, block=block, progress=False
    ):
        for i, row in enumerate(idx):
            out[str(ids[i])] = [str(ids[j]) for j in row if j >= 0]
    return out


def pair_groups(
    images: pd.DataFrame,
    vectors: np.ndarray,
    *,
    top_k: int = 20,
    seed: int = 0,
    engine: str = "blocked",
    block: int = 8192,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[GroupResult]]:
    """Pair every image with one partner drawn among its top-``top_k`` other-item neighbours.

    ``images`` has columns image_id, source, category, item_id, aligned row by row with ``vectors``
    (L2-normalised). Images in groups with fewer than two items get no partner (counted per group).
    The pairs depend only on the images, their float32 vectors, ``top_k`` and ``seed``: not on the
    engine, the block size, the BLAS, the CPU or the manifest's row order. ``rank`` is the partner's
    place in its reference's top-k by similarity (0: the most similar).
    """
    frames, results = [], []
    for source, category, rows, by_id, ids, sims, idx, counts in group_neighbours(
        images, vectors, top_k=top_k, engine=engine, block=block, progress=progress
    ):
        # Rows with a partner, in the manifest's order as before.
        has = np.nonzero(counts > 0)[0]
        has = has[np.argsort(by_id[has], kind="stable")]
        draws = np.array([draw_rank(seed, ids[i], int(counts[i])) for i in has], dtype=np.int64)
        # The draw picks a place in the top-k sorted by index: a set, whatever its similarity order.
        columns_by_index = np.argsort(np.where(idx >= 0, idx, len(rows)), axis=1, kind="stable")
        ranks = columns_by_index[has, draws] if len(has) else np.array([], dtype=np.int64)
        chosen = idx[has, ranks] if len(has) else np.array([], dtype=np.int64)
        frames.append(
            pd.DataFrame(
                {
                    "reference_id": ids[has],
                    "target_id": ids[chosen],
                    "source": source,
                    "category": category,
                    "similarity": sims[has, ranks].astype(np.float32) if len(has) else np.array([], np.float32),
                    "rank": ranks.astype(np.int64),
                    "candidates": counts[has].astype(np.int64),
                },
                columns=PAIR_COLUMNS,
            )
        )
        results.append(GroupResult(str(source), str(category), len(rows), len(has)))
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)
    return pairs, results


def similarity_summary(pairs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Distribution of the chosen pairs' similarities per group, for the data card."""
    out = {}
    for (source, category), g in pairs.groupby(["source", "category"], sort=True):
        s = g["similarity"].to_numpy(dtype=np.float64)
        q = np.quantile(s, [0.0, 0.1, 0.5, 0.9, 1.0])
        out[f"{source}/{category}"] = {
            "pairs": int(len(s)),
            "mean": round(float(s.mean()), 6),
            "std": round(float(s.std()), 6),
            **{name: round(float(v), 6) for name, v in zip(("min", "p10", "median", "p90", "max"), q, strict=True)},
        }
    return out


def iter_blocks(n: int, block: int) -> Iterator[tuple[int, int]]:
    for i0 in range(0, n, block):
        yield i0, min(i0 + block, n)


def align_embeddings(
    images: pd.DataFrame, image_ids: np.ndarray, vectors: np.ndarray, failed_ids: np.ndarray, *, where: str
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Vectors in the order of ``images``; images whose decoding failed at embedding time are dropped.

    Returns (images kept, their vectors, images skipped). An image with neither a vector nor a
    recorded failure means the files are out of step: an error naming how many and ``where``.
    """
    position = pd.Series(np.arange(len(image_ids)), index=pd.Index(image_ids))
    if not position.index.is_unique:
        raise ValueError(f"{where}: duplicate image ids in the embeddings")
    failed = images["image_id"].isin(set(failed_ids.tolist()))
    found = images["image_id"].isin(position.index)
    lost = images.loc[~found & ~failed, "image_id"]
    if len(lost):
        from fashionblip2.common.issues import BadInputError

        raise BadInputError(
            f"{where}: {len(lost)} image(s) of the manifest have no embedding (e.g. {', '.join(lost.head(3))}); "
            "the embeddings are older than the manifest: rerun the embed rules"
        )
    kept = images[found].reset_index(drop=True)
    return kept, vectors[position.loc[kept["image_id"]].to_numpy()], images[failed & ~found].reset_index(drop=True)
