import random

import numpy as np
import pytest

from fashionblip2.datasets.caption_text import join_captions, random_caption
from fashionblip2.evaluation.protocol import fashioniq_summary, recall_at_k, retrieve


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
    top = retrieve(queries, gallery, 50)
    got = recall_at_k(top, targets)
    sims = queries @ gallery.T
    rank = (sims > sims[np.arange(300), targets][:, None]).sum(axis=1)  # 0 = the target is first
    for k in (10, 50):
        assert got[f"R@{k}"] == pytest.approx((rank < k).mean() * 100)
    assert got["R@10"] >= 20.0  # the easy queries are found


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
