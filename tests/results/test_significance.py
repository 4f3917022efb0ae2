"""Bootstrap intervals and paired tests, checked against independent computations."""

import math

import numpy as np
import pandas as pd
import pytest

from fashionblip2.results.significance import (
    confidence_intervals,
    metric_names,
    paired_difference,
    permutation_p_value,
)


def rankings(hits10, hits50, categories):
    n = len(hits10)
    return pd.DataFrame(
        {
            "category": categories,
            "reference": [f"r{i}" for i in range(n)],
            "target": [f"t{i}" for i in range(n)],
            "text": ["x"] * n,
            "hit@10": hits10,
            "hit@50": hits50,
        }
    )


def test_every_metric_gets_an_interval_around_the_protocol_value():
    rng = np.random.default_rng(1)
    cats = np.repeat(["dress", "shirt", "toptee"], [100, 120, 80])
    h10 = rng.random(300) < 0.3
    h50 = h10 | (rng.random(300) < 0.4)
    ci = confidence_intervals(rankings(h10, h50, cats), samples=500, seed=0)
    assert list(ci) == metric_names(["dress", "shirt", "toptee"])
    r10 = {c: 100 * h10[cats == c].mean() for c in ("dress", "shirt", "toptee")}
    r50 = {c: 100 * h50[cats == c].mean() for c in ("dress", "shirt", "toptee")}
    assert ci["shirt R@10"].value == pytest.approx(r10["shirt"])
    avg = (np.mean(list(r10.values())) + np.mean(list(r50.values()))) / 2  # the protocol's Avg
    assert ci["Avg"].value == pytest.approx(avg)
    for interval in ci.values():
        assert interval.low <= interval.value <= interval.high


def test_a_single_proportion_matches_the_normal_approximation():
    # Independent check: for one category and a large sample, the percentile bootstrap interval of a
    # proportion is close to the Wald interval p ± 1.96 sqrt(p(1-p)/n).
    n, p = 4000, 0.35
    h = np.arange(n) < p * n
    ci = confidence_intervals(rankings(h, h, ["dress"] * n), samples=2000, seed=3)["dress R@10"]
    wald = 1.96 * np.sqrt(p * (1 - p) / n) * 100
    assert ci.value == pytest.approx(35.0)
    assert ci.half_width == pytest.approx(wald, rel=0.1)


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others():
    rng = np.random.default_rng(0)
    h = rng.random(200) < 0.5
    frame = rankings(h, h, ["dress"] * 200)
    assert confidence_intervals(frame, 300, seed=7) == confidence_intervals(frame, 300, seed=7)
    assert confidence_intervals(frame, 300, seed=7) != confidence_intervals(frame, 300, seed=8)


def test_a_large_paired_difference_is_significant_and_an_identical_pair_is_not():
    rng = np.random.default_rng(2)
    cats = np.repeat(["dress", "shirt", "toptee"], 200)
    weak = rng.random(600) < 0.2
    strong = weak | (rng.random(600) < 0.3)  # the same queries, about 24 points better
    a, b = rankings(strong, strong, cats), rankings(weak, weak, cats)
    d = paired_difference(a, b, samples=1000, seed=0)
    assert d.significant and d.interval.low > 15 and d.p_value < 0.01
    same = paired_difference(b, b.sample(frac=1, random_state=0), samples=1000, seed=0)  # row order is irrelevant
    assert same.interval.value == 0 and not same.significant and same.p_value == 1.0


def test_the_permutation_p_value_agrees_with_an_exact_sign_test():
    # Per-query differences of +1 or -1 only: the sign-flip test is then the two-sided binomial sign test.
    diffs = np.array([1.0] * 34 + [-1.0] * 16)
    exact = min(1.0, 2 * sum(math.comb(50, k) for k in range(34, 51)) / 2**50)
    assert permutation_p_value(diffs, samples=20000, seed=0) == pytest.approx(exact, abs=0.01)


def test_a_pair_on_different_queries_is_refused():
    h = np.ones(10, bool)
    with pytest.raises(ValueError, match="same queries"):
        paired_difference(rankings(h, h, ["dress"] * 10), rankings(h[:8], h[:8], ["dress"] * 8), samples=100)
