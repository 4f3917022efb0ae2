"""The pairs must not depend on the engine, the BLAS, the CPU or float32 rounding (issue "fidelity", item 10):
every changed pair is a new paid LLM call."""

import numpy as np
import pandas as pd
import pytest

from fashionblip2.pairing import topk
from fashionblip2.pairing.topk import float32_dot_error, knn, other_item_neighbours, pair_groups, rescore_float64

TOP_K = 20
ENGINE_RUNS = [("blocked", 16), ("blocked", 37), ("blocked", 8192), ("faiss", 8192)]


def canonical_top_k(x: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The definition, by brute force: every other item's image scored in float64, (score desc, index asc)."""
    n = len(x)
    everyone = np.broadcast_to(np.arange(n), (n, n))
    s = rescore_float64(x, np.arange(n), everyone)
    s[items[:, None] == items[None, :]] = -np.inf
    order = np.lexsort((everyone, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1).astype(np.float32), order


def images_frame(items: np.ndarray, category: str = "dress") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"img{i:04d}" for i in range(len(items))],
            "source": "s",
            "category": category,
            "item_id": [f"item{v}" for v in items],
        }
    )


def tie_group(d: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A group whose k-th place is contested by exact and by near ties, with some multi-view items.

    - anchor A = the all-ones direction: 15 clear neighbours, then 40 permutations of one vector,
      whose products with A are equal in exact arithmetic and differ only by rounding (float32 and
      float64 alike, as the order of the terms changes), for the last 5 places;
    - anchor B: 17 clear neighbours, then 10 identical copies of one vector for the last 3 places;
    - 120 random images, in items of 1 to 3 views.
    """
    rng = np.random.default_rng(seed)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    a = np.ones(d) / np.sqrt(d)
    v = unit(0.6 * a + 0.8 * unit(rng.standard_normal(d))).astype(np.float32)
    b = unit(rng.standard_normal(d))
    w = unit(0.6 * b + 0.8 * unit(rng.standard_normal(d)))
    parts = [
        a[None],
        unit(a + 0.05 * rng.standard_normal((15, d))),
        np.stack([v[rng.permutation(d)] for _ in range(40)]),
        b[None],
        unit(b + 0.05 * rng.standard_normal((17, d))),
        np.repeat(w[None], 10, axis=0),
        unit(rng.standard_normal((120, d))),
    ]
    x = np.concatenate([p.astype(np.float32) for p in parts])
    singles = len(x) - 120
    background_items = singles + np.repeat(np.arange(60), rng.integers(1, 4, size=60))[:120]
    items = np.concatenate([np.arange(singles), background_items])
    return x, items


def test_float64_scores_depend_on_the_two_vectors_only():
    x, _ = tie_group()
    rng = np.random.default_rng(1)
    rows = rng.integers(len(x), size=300)
    cands = rng.integers(len(x), size=(300, 30))
    s = rescore_float64(x, rows, cands)
    # The same pairs in other places of a shortlist, and one pair at a time, give the same bits.
    flipped = rescore_float64(x, rows[::-1], cands[::-1, ::-1])[::-1, ::-1]
    one = np.array(
        [
            [np.sum(x[r].astype(np.float64) * x[c].astype(np.float64)) for c in cs]
            for r, cs in zip(rows, cands, strict=True)
        ]
    )
    np.testing.assert_array_equal(s, flipped)
    np.testing.assert_array_equal(s, one)
    # The copies of w tie exactly in float64; the float32 engines stay within the proven bound.
    copies = np.arange(len(x))[(x == x[-121]).all(axis=1)]
    assert len(copies) == 10 and len(set(rescore_float64(x, np.zeros(10, int), copies[None].repeat(10, 0))[0])) == 1
    f32, idx = knn(x, len(x), "faiss")
    exact = rescore_float64(x, np.arange(len(x)), idx)
    assert (np.abs(f32 - exact) <= float32_dot_error(x)[:, None]).all()


@pytest.mark.parametrize(("engine", "block"), ENGINE_RUNS)
def test_every_engine_gives_the_canonical_top_k_at_exact_and_near_ties(engine, block):
    x, items = tie_group()
    sims, idx, counts = other_item_neighbours(x, items, TOP_K, engine, block)
    ref_sims, ref_idx = canonical_top_k(x, items, TOP_K)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sims, ref_sims)
    assert (counts == TOP_K).all()
    # The boundary really is contested: A keeps 5 of its 40 tied permutations, B 3 of its 10 copies.
    assert np.isin(idx[0], np.arange(16, 56)).sum() == 5
    assert np.isin(idx[56], np.arange(74, 84)).sum() == 3 and set(idx[56]) >= {74, 75, 76}


def test_engines_and_block_sizes_give_identical_pair_files():
    x, items = tie_group()
    images = images_frame(items)
    frames = [pair_groups(images, x, top_k=TOP_K, seed=3, engine=e, block=b, progress=False)[0] for e, b in ENGINE_RUNS]
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], other)


def test_a_shortlist_cut_through_a_tie_is_redone_exactly(monkeypatch):
    x, items = tie_group()
    redone: list[int] = []
    exact_rows = topk._exact_rows

    def spy(x, item_codes, rows, top_k, error):
        redone.extend(rows.tolist())
        return exact_rows(x, item_codes, rows, top_k, error)

    monkeypatch.setattr(topk, "_exact_rows", spy)
    monkeypatch.setattr(topk, "SHORTLIST_MARGIN", 0)
    ref_sims, ref_idx = canonical_top_k(x, items, TOP_K)
    for engine, block in ENGINE_RUNS:
        redone.clear()
        sims, idx, _ = other_item_neighbours(x, items, TOP_K, engine, block)
        # Anchors A and B see more tied candidates than a shortlist without margin holds.
        assert {0, 56} <= set(redone)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(sims, ref_sims)


def near_duplicate_clusters(d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of 21 near-identical images of 21 items: each one's top-20 is its cluster, in an order
    that float32 rounding decides (similarities 1 - O(1e-6), a few float32 ulps apart)."""
    rng = np.random.default_rng(seed)
    bases = rng.standard_normal((8, d))
    x = np.repeat(bases, 21, axis=0) + 3e-4 * rng.standard_normal((8 * 21, d))
    x = np.concatenate([x, rng.standard_normal((150, d))]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = np.concatenate([np.arange(8 * 21), 8 * 21 + np.arange(150) // 2])
    return x, items


def perturbed(x: np.ndarray, how: str) -> np.ndarray:
    if how == "relative noise 1e-7":
        y = x * (1 + 1e-7 * np.random.default_rng(9).standard_normal(x.shape)).astype(np.float32)
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    # The same vectors normalised again in another summation order (float64, components reversed).
    norms = np.sqrt(np.sum(x[:, ::-1].astype(np.float64) ** 2, axis=1, keepdims=True))
    return (x / norms).astype(np.float32)


@pytest.mark.parametrize("how", ["relative noise 1e-7", "renormalised in another order"])
def test_float32_rounding_noise_changes_no_pair(how):
    x, items = near_duplicate_clusters()
    images = images_frame(items)
    y = perturbed(x, how)
    assert not np.array_equal(x, y) and np.abs(x - y).max() < 1e-6
    columns = ["reference_id", "target_id", "candidates"]
    for engine in ("blocked", "faiss"):
        before, _ = pair_groups(images, x, top_k=TOP_K, seed=0, engine=engine, block=64, progress=False)
        after, _ = pair_groups(images, y, top_k=TOP_K, seed=0, engine=engine, block=64, progress=False)
        pd.testing.assert_frame_equal(before[columns], after[columns])
        # The noise does reorder the clusters' neighbours (what a draw by rank was exposed to).
        assert (before["rank"] != after["rank"]).any()


def test_pairs_do_not_depend_on_the_manifest_row_order():
    x, items = tie_group()
    images = pd.concat([images_frame(items[:90], "dress"), images_frame(items[90:], "skirt")], ignore_index=True)
    images["image_id"] = [f"img{i:04d}" for i in range(len(images))]
    shuffled = np.random.default_rng(4).permutation(len(images))
    a, _ = pair_groups(images, x, top_k=TOP_K, seed=7, progress=False)
    b, _ = pair_groups(images.iloc[shuffled].reset_index(drop=True), x[shuffled], top_k=TOP_K, seed=7, progress=False)
    key = ["category", "reference_id"]
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True))
