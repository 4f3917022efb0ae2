"""Bootstrap intervals and paired tests, checked against independent computations."""

import math

import numpy as np
import pandas as pd
import pytest

from fashionblip2.results.significance import (
    PValue,
    confidence_intervals,
    holm,
    holm_with_bounds,
    metric_names,
    paired_difference,
    permutation_floor,
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


@pytest.mark.parametrize(
    ("raw", "adjusted"),
    [
        # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04, then 0.04 -> 0.06 (monotone).
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
        # 0.001 * 3 = 0.003, 0.013 * 2 = 0.026, 0.014 * 1 = 0.014 -> 0.026.
        ([0.014, 0.001, 0.013], [0.026, 0.003, 0.026]),
        # Capped at 1: 0.5 * 2 = 1.0, then 0.6 -> 1.0.
        ([0.6, 0.5], [1.0, 1.0]),
        # Equal p-values: 0.02 * 3 = 0.06, 0.02 * 2 = 0.04 -> 0.06, 0.5 * 1.
        ([0.02, 0.5, 0.02], [0.06, 0.5, 0.06]),
        ([0.03], [0.03]),  # a family of one: unchanged
        ([], []),
    ],
)
def test_holm_matches_hand_computed_values(raw, adjusted):
    assert holm(raw).tolist() == pytest.approx(adjusted)


def test_holm_never_lowers_a_p_and_keeps_the_order():
    rng = np.random.default_rng(0)
    p = rng.random(15) ** 3
    adjusted = holm(p)
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= 0).all()


def test_a_difference_no_draw_reaches_sits_at_the_floor():
    # Every query better on one side: no sign flip is as extreme, p = (0 + 1) / (draws + 1).
    diffs = np.ones(60)
    assert permutation_p_value(diffs, samples=200, seed=0) == permutation_floor(200) == 1 / 201
    h = np.arange(300) < 150
    strong, weak = rankings(h, h, ["dress"] * 300), rankings(np.zeros(300, bool), h, ["dress"] * 300)
    d = paired_difference(strong, weak, samples=200, seed=0)
    assert d.p_value == 1 / 201 and d.draws == 200 and d.p_at_floor
    assert not paired_difference(strong, strong, samples=200, seed=0).p_at_floor  # p = 1


def test_a_p_at_the_floor_prints_as_below_one_over_the_draws_and_stays_a_number():
    floor = permutation_floor(1000)
    raw, adjusted = holm_with_bounds([floor, floor, 0.2, floor], draws=1000)
    assert [float(p) for p in raw] == [floor, floor, 0.2, floor]
    assert [f"{p:.3f}" for p in raw] == ["< 0.001", "< 0.001", "0.200", "< 0.001"]
    # Holm of the numbers: 4, 3 -> 4, 2 -> 4 floors, then 0.2; those rest on p-values at the floor.
    assert [float(p) for p in adjusted] == pytest.approx([4 * floor, 4 * floor, 0.2, 4 * floor])
    assert [f"{p:.3f}" for p in adjusted] == ["< 0.004", "< 0.004", "0.200", "< 0.004"]
    # A Holm p decided by a p above the floor prints as the number.
    raw, adjusted = holm_with_bounds([floor, 0.02], draws=1000)
    assert [f"{p:.3f}" for p in adjusted] == ["< 0.002", "0.020"]
    raw, adjusted = holm_with_bounds([floor, 3 / 1001], draws=1000)  # 2 floors, then 3/1001
    assert [f"{p:.4f}" for p in adjusted] == ["< 0.002", "0.0030"]
    # Monotonicity carries a bound to a p above the floor: 4 floors, 3 -> 4, 2 -> 4, then 2/1001 -> 4.
    raw, adjusted = holm_with_bounds([floor, floor, floor, 2 / 1001], draws=1000)
    assert [f"{p:.3f}" for p in raw][-1] == "0.002" and [f"{p:.3f}" for p in adjusted] == ["< 0.004"] * 4
    assert isinstance(raw[0], PValue) and f"{raw[0]}" == str(floor) and raw[0] < 0.001
