import random

import numpy as np
import pytest

from fashionblip2.datasets.caption_text import join_captions, random_caption
from fashionblip2.datasets.triplets import Triplets
from fashionblip2.evaluation import retrieval
from fashionblip2.evaluation.protocol import fashioniq_summary, hits_at_k, rank_gallery, recall_at_k, retrieve


def test_captions_are_joined_as_the_reference_code_does():
    assert join_captions(["is blue.", "has long sleeves?"]) == "Is blue and has long sleeves"
    assert join_captions([" is Red, ", "Is shorter"]) == "Is red and Is shorter"  # capitalize() lowercases the rest


def test_training_captions_are_randomised_four_ways():
    rng = random.Random(0)
    seen = {random_caption(["is blue", "is longer."], rng) for _ in range(200)}
    assert seen == {"Is blue and is longer", "Is longer and is blue", "Is blue", "Is longer"}


def test_recall_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    gallery = rng.standard_normal((500, 32)).astype(np.float32)
    targets = rng.integers(0, 500, size=300)
    queries[:60] = gallery[targets[:60]] + 0.01  # some easy queries
    top, ranks = rank_gallery(queries, gallery, targets, 50)
    got = recall_at_k(ranks)
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    rank = (sims > sims[np.arange(300), targets][:, None]).sum(axis=1)  # 0 = the target is first (no ties here)
    assert ranks.tolist() == (rank + 1).tolist()
    for k in (10, 50):
        assert got[f"R@{k}"] == pytest.approx((rank < k).mean() * 100)
    assert got["R@10"] >= 20.0  # the easy queries are found
    assert np.array_equal(retrieve(queries, gallery, 50), top)


def sprc_order(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """SPRC's compute_fiq_val_metrics, with the stable sort that defines its order of equal scores:
    the gallery sorted by distance 1 - similarity (here exact: the similarities are small binary
    fractions, so 1 - s neither merges nor splits them)."""
    return np.argsort(1 - queries.astype(np.float64) @ gallery.astype(np.float64).T, axis=1, kind="stable")


def tied_gallery(place: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A query and a gallery of 20 in which 8 items score above 4 tied ones (0.5), the rest below;
    the target is the ``place``-th (0-based) of the tied ones in gallery order. Two of the tied ones
    are the target's exact twins (the same vector, as the same image under another id), one only
    scores the same."""
    rng = np.random.default_rng(place)
    query = np.zeros((1, 4), np.float32)
    query[0, 0] = 1
    gallery = np.zeros((20, 4), np.float32)
    gallery[:, 1:] = rng.standard_normal((20, 3))
    gallery[:, 0] = np.linspace(-0.9, -0.1, 20)  # below the tie
    better = [0, 3, 5, 7, 9, 12, 14, 19]
    gallery[better, 0] = [0.9, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.51]
    tied = [2, 8, 11, 16]  # gallery order of the tied items
    twin = np.array([0.5, 0.25, -0.125, 0.0625], np.float32)
    gallery[tied] = twin
    gallery[tied[1], 1:] = [2.0, 3.0, -1.0]  # scores 0.5 too, but is another vector
    target = tied[place]
    gallery[target] = twin
    return query, gallery, target


@pytest.mark.parametrize("place", [0, 1, 2, 3])
def test_a_tie_at_the_kth_place_is_broken_in_gallery_order_for_rank_and_hits_alike(place):
    query, gallery, target = tied_gallery(place)
    top, ranks = rank_gallery(query, gallery, np.array([target]), 20)
    # 8 items above, then the tied ones in gallery order: the target's rank is its place among them.
    assert ranks[0] == 9 + place
    # The rule is SPRC's: the target's place in the sorted gallery.
    assert ranks[0] == int(np.where(sprc_order(query, gallery)[0] == target)[0][0]) + 1
    assert top[0].tolist() == sprc_order(query, gallery)[0].tolist()
    for k in (8, 9, 10, 11, 12):
        hit = bool(hits_at_k(ranks, k)[0])
        assert hit == (ranks[0] <= k) == (target in top[0, :k]) == (target in sprc_order(query, gallery)[0, :k])
        assert recall_at_k(ranks, [k])[f"R@{k}"] == 100.0 * hit
    # Not in the target's favour: at K = 10 the third and fourth of the tied items miss.
    assert bool(hits_at_k(ranks, 10)[0]) == (place < 2)
    assert top[0, ranks[0] - 1] == target
    assert np.array_equal(retrieve(query, gallery, 12), top[:, :12])


def test_exact_twins_score_the_same_wherever_they_sit_in_the_gallery():
    # A BLAS may round one dot product differently in different columns; twins must still tie, and
    # so sit next to each other, the first in gallery order first.
    # With numpy's OpenBLAS (0.3.31), this shape's plain float64 product scores 17 twin pairs
    # differently, and the twins then fall apart in the order.
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((271, 12)).astype(np.float32)
    queries = rng.standard_normal((105, 12)).astype(np.float32)
    perm = rng.permutation(len(gallery))
    first, second = np.sort(np.stack([perm[:40], perm[40:80]]), axis=0)
    gallery[second] = gallery[first]
    order = retrieve(queries, gallery, len(gallery))
    position = np.argsort(order, axis=1)  # each item's place in each query's order
    assert (position[:, second] == position[:, first] + 1).all()
    _, ranks = rank_gallery(queries, gallery, np.full(len(queries), second[0]), 0)
    assert (ranks == position[:, second[0]] + 1).all()


def test_saved_rankings_agree_with_their_hits_and_the_recall(monkeypatch):
    """evaluate_queries on constructed ties (the query vectors are given: no model): the saved rank,
    hit@K, top ids and R@K all follow the one rule."""
    query, gallery, _ = tied_gallery(2)
    tied = [2, 8, 11, 16]
    gallery[tied[1]] = gallery[tied[0]]  # all four tied items are exact twins now
    keys = [f"dress:{i}" for i in range(20)]
    # Four queries with the same vector, each aiming at one of the tied items (at places 9 to 12).
    data = Triplets(
        reference=["dress:0"] * 4, target=[keys[t] for t in tied], texts=[["a", "b"]] * 4, category=["dress"] * 4
    )
    monkeypatch.setattr(retrieval, "encode_queries", lambda *a, **k: np.repeat(query, 4, axis=0))
    results, rankings = retrieval.evaluate_queries(
        None, None, None, data, {"dress": keys}, {"dress": gallery}, device=None, ks=(10, 50), text_cleanup="none"
    )
    assert rankings["target_rank"].tolist() == [9, 10, 11, 12]
    assert rankings["hit@10"].tolist() == [True, True, False, False]
    for k in (10, 50):
        assert (rankings[f"hit@{k}"] == (rankings["target_rank"] <= k)).all()
    for _, row in rankings.iterrows():
        assert (row["target"] in list(row["top"])) == (row["target_rank"] <= retrieval.TOP_SAVED)
    assert results["categories"]["dress"]["R@10"] == 50.0
    assert results["categories"]["dress"]["R@50"] == 100.0


def test_the_reference_image_stays_in_the_gallery():
    gallery = np.eye(4, dtype=np.float32)
    queries = gallery[[0]] * 1.0  # the query looks exactly like its reference (gallery item 0)
    top = retrieve(queries, gallery, 2)
    assert top[0, 0] == 0  # not removed: it may take a place in the top K, as in the protocol


def test_summary_means_and_avg():
    per = {
        "dress": {"R@10": 10.0, "R@50": 30.0},
        "shirt": {"R@10": 20.0, "R@50": 40.0},
        "toptee": {"R@10": 30.0, "R@50": 50.0},
    }
    assert fashioniq_summary(per) == {"mean R@10": 20.0, "mean R@50": 40.0, "Avg": 30.0}
