import numpy as np
import pandas as pd
import pytest

from fashionblip2.common.issues import BadInputError
from fashionblip2.pairing.topk import (
    align_embeddings,
    draw_rank,
    knn,
    other_item_neighbours,
    pair_groups,
)
from fashionblip2.sources.manifest import count_for_pairing, select_for_pairing


def unit_vectors(n: int, d: int, seed: int = 0, clusters: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if clusters:
        x += 3 * rng.standard_normal((clusters, d)).astype(np.float32)[rng.integers(clusters, size=n)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = x @ x.T
    idx = np.lexsort((np.broadcast_to(np.arange(len(x)), sims.shape), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


@pytest.mark.parametrize(("n", "block"), [(300, 64), (300, 300), (257, 100), (40, 16), (10, 64)])
@pytest.mark.parametrize("engine", ["blocked", "faiss"])
def test_engines_are_exact(n, block, engine):
    x = unit_vectors(n, 24, seed=n, clusters=5)
    sims, idx = knn(x, 23, engine, block)
    ref_sims, ref_idx = brute_force(x, min(23, n))
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    # Indices agree except where two similarities tie to float precision.
    same = idx == ref_idx
    assert same.mean() > 0.99 and np.allclose(np.take_along_axis(x @ x.T, idx, 1), ref_sims, atol=1e-5)


def test_exact_duplicates_are_each_others_nearest():
    x = unit_vectors(50, 8)
    x[10] = x[20] = x[30]  # three identical images (their products tie up to float rounding)
    for engine in ("blocked", "faiss"):
        _, idx = knn(x, 3, engine, block=16)
        assert set(idx[10]) == set(idx[20]) == set(idx[30]) == {10, 20, 30}


def test_other_item_neighbours_exclude_the_image_and_its_item():
    x = unit_vectors(200, 16, clusters=4)
    items = np.repeat(np.arange(50), 4)  # four views per item: the closest images are the other views
    x[1::4] = x[0::4] + 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims, idx, counts = other_item_neighbours(x, items, 20, block=64)
    assert (counts == 20).all()
    assert (items[idx] != items[:, None]).all()
    full = x @ x.T
    full[items[:, None] == items[None, :]] = -np.inf
    twentieth = np.sort(full, axis=1)[:, -20]
    assert (sims[:, -1] >= twentieth - 1e-6).all() and (sims[:, -1] <= twentieth + 1e-6).all()


def frame(n_items: int, views: int, source="s", category="c") -> pd.DataFrame:
    rows = [(f"{source}:{category}:{i}_{v}", source, category, f"{i}") for i in range(n_items) for v in range(views)]
    return pd.DataFrame(rows, columns=["image_id", "source", "category", "item_id"])


def test_pairs_respect_every_rule():
    images = pd.concat([frame(30, 3, "a", "dress"), frame(25, 2, "a", "skirt"), frame(40, 1, "b", "dress")])
    images = images.reset_index(drop=True)
    x = unit_vectors(len(images), 32, seed=1, clusters=6)
    pairs, groups = pair_groups(images, x, top_k=20, seed=5, progress=False)
    assert len(pairs) == len(images) and pairs.reference_id.is_unique
    lookup = images.set_index("image_id")
    ref, tgt = lookup.loc[pairs.reference_id], lookup.loc[pairs.target_id]
    assert (pairs.reference_id != pairs.target_id).all()
    assert (ref.item_id.to_numpy() != tgt.item_id.to_numpy()).all()
    assert (ref.source.to_numpy() == tgt.source.to_numpy()).all()
    assert (ref.category.to_numpy() == tgt.category.to_numpy()).all()
    # Every partner lies within the top-20 of its reference among other items of its group.
    pos = {i: k for k, i in enumerate(images.image_id)}
    for p in pairs.itertuples():
        g = images[(images.source == p.source) & (images.category == p.category)]
        others = g[g.item_id != lookup.loc[p.reference_id, "item_id"]]
        sims = x[[pos[i] for i in others.image_id]] @ x[pos[p.reference_id]]
        assert np.isclose(p.similarity, x[pos[p.target_id]] @ x[pos[p.reference_id]], atol=1e-5)
        assert (sims > p.similarity + 1e-6).sum() < 20 and p.rank < p.candidates == min(20, len(others))
    assert {(g.source, g.category): g.paired for g in groups} == {
        ("a", "dress"): 90,
        ("a", "skirt"): 50,
        ("b", "dress"): 40,
    }


def test_pairs_are_deterministic_and_depend_on_the_seed():
    images = frame(60, 2)
    x = unit_vectors(len(images), 16, seed=2, clusters=3)
    a, _ = pair_groups(images, x, seed=1, progress=False)
    b, _ = pair_groups(images, x, seed=1, progress=False)
    c, _ = pair_groups(images, x, seed=2, progress=False)
    f, _ = pair_groups(images, x, seed=1, engine="faiss", progress=False)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a[["reference_id", "target_id", "rank"]], f[["reference_id", "target_id", "rank"]])
    assert (a.target_id != c.target_id).mean() > 0.5
    # The draw is uniform over the candidates.
    assert a["rank"].between(0, 19).all() and a["rank"].nunique() > 10


def test_a_group_with_one_item_gets_no_pair_and_is_counted():
    images = pd.concat([frame(1, 3, "s", "lonely"), frame(5, 1, "s", "busy")]).reset_index(drop=True)
    pairs, groups = pair_groups(images, unit_vectors(len(images), 8), progress=False)
    counts = {g.category: (g.images, g.paired) for g in groups}
    assert counts == {"lonely": (3, 0), "busy": (5, 5)}
    assert set(pairs.category) == {"busy"} and (pairs.candidates == 4).all()


def test_draw_rank_is_uniform_and_stable():
    draws = [draw_rank(0, f"img{i}", 20) for i in range(4000)]
    counts = np.bincount(draws, minlength=20)
    assert counts.min() > 140 and counts.max() < 260
    assert draw_rank(0, "img7", 20) == draws[7] and draw_rank(0, "x", 1) == 0


def test_embeddings_out_of_step_with_the_manifest_is_a_clear_error():
    images = frame(4, 1)
    ids = images.image_id.to_numpy()
    vectors = unit_vectors(4, 8)
    kept, v, skipped = align_embeddings(images, ids[::-1], vectors[::-1], np.array([], str), where="m vs e")
    assert (kept.image_id == images.image_id).all() and np.allclose(v, vectors)
    kept, v, skipped = align_embeddings(images, ids[1:], vectors[1:], ids[:1], where="m vs e")
    assert len(kept) == 3 and skipped.image_id.tolist() == [ids[0]]
    with pytest.raises(BadInputError, match=r"m vs e: 2 image\(s\) of the manifest have no embedding"):
        align_embeddings(images, ids[2:], vectors[2:], np.array([], str), where="m vs e")


def test_select_for_pairing():
    images = pd.DataFrame(
        {
            "image_id": list("abcde"),
            "source": ["fashion200k", "fashioniq", "fashioniq", "deepfashion_mm", "shop"],
            "split": ["train", "val", "train", "all", "train"],
        }
    )
    chosen = select_for_pairing(images, ["fashion200k", "fashioniq", "deepfashion_mm"], ["val"])
    assert chosen.image_id.tolist() == ["a", "b", "d"]


def test_count_for_pairing_reads_the_manifest_file(tmp_path):
    images = pd.DataFrame({"image_id": list("abc"), "source": ["fashion200k", "fashioniq", "fashioniq"],
                           "split": ["train", "val", "test"], "path": "x"})  # fmt: skip
    images.to_parquet(tmp_path / "m.parquet")
    assert count_for_pairing(tmp_path / "m.parquet", ["fashion200k", "fashioniq"], ["val"]) == 2
