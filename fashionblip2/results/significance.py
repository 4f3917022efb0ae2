"""How sure a recall is: bootstrap confidence intervals over queries, and paired tests between two
models evaluated on the same queries.

Every FashionIQ-protocol number is a linear function of per-query hits: R@K of a category is the
mean of its queries' hit@K, the means and Avg are means over categories. A bootstrap replicate
therefore resamples each category's queries with replacement (stratified, as the protocol scores
each category on its own) and recomputes every number from the same draw. The draw depends only on
the seed and the category sizes, so two models scored on the same queries get the same draws: the
difference of their replicates is the paired bootstrap of their difference. The paired permutation
test flips, per query, which model's hits are which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashionblip2.evaluation.protocol import KS

QUERY_KEY = ["category", "reference", "target", "text"]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence bounds, in percent."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Difference:
    """``a - b`` on the same queries: the paired bootstrap interval and the permutation p-value."""

    interval: Interval
    p_value: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (at the level it was computed for)."""
        return self.interval.low > 0 or self.interval.high < 0


def metric_names(categories: Sequence[str], ks: Sequence[int] = KS) -> list[str]:
    """``<category> R@K`` per category and K, then ``mean R@K`` per K, then ``Avg``."""
    return [f"{c} R@{k}" for c in categories for k in ks] + [f"mean R@{k}" for k in ks] + ["Avg"]


def _hits(rankings: pd.DataFrame, k: int) -> np.ndarray:
    return rankings[f"hit@{k}"].to_numpy(dtype=np.float64)


def _metrics_from_means(per_category: dict[str, dict[int, np.ndarray]], ks: Sequence[int]) -> dict[str, np.ndarray]:
    out = {f"{c} R@{k}": 100 * per_category[c][k] for c in per_category for k in ks}
    for k in ks:
        out[f"mean R@{k}"] = np.mean([out[f"{c} R@{k}"] for c in per_category], axis=0)
    out["Avg"] = np.mean([out[f"mean R@{k}"] for k in ks], axis=0)
    return out


def _draws(sizes: dict[str, int], samples: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled query positions per category, (samples, n); the same for every model with these sizes."""
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, n, size=(samples, n)) for c, n in sizes.items()}


def _by_category(rankings: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {c: part for c, part in rankings.groupby("category", sort=True)}


def replicates(
    rankings: pd.DataFrame, samples: int, seed: int, ks: Sequence[int] = KS
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every metric on the queries as given, and its ``samples`` bootstrap replicates."""
    parts = _by_category(rankings)
    draws = _draws({c: len(p) for c, p in parts.items()}, samples, seed)
    point = _metrics_from_means({c: {k: _hits(p, k).mean() for k in ks} for c, p in parts.items()}, ks)
    reps = _metrics_from_means({c: {k: _hits(p, k)[draws[c]].mean(axis=1) for k in ks} for c, p in parts.items()}, ks)
    return {m: float(v) for m, v in point.items()}, reps


def _interval(value: float, reps: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


def confidence_intervals(
    rankings: pd.DataFrame, samples: int = 1000, seed: int = 0, level: float = 0.95, ks: Sequence[int] = KS
) -> dict[str, Interval]:
    """Percentile bootstrap interval of every metric (see :func:`metric_names`) over queries."""
    point, reps = replicates(rankings, samples, seed, ks)
    return {m: _interval(point[m], reps[m], level) for m in point}


def align(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two rankings in one query order; they must hold the same queries (same evaluation set)."""
    a, b = (x.sort_values(QUERY_KEY, kind="stable").reset_index(drop=True) for x in (a, b))
    if len(a) != len(b) or not a[QUERY_KEY].equals(b[QUERY_KEY]):
        raise ValueError("a paired comparison needs the same queries on both sides (same evaluation set)")
    return a, b


def _per_query_avg(rankings: pd.DataFrame, ks: Sequence[int]) -> np.ndarray:
    """Each query's share of Avg: Avg is the sum of these over the queries."""
    sizes = rankings.groupby("category")["category"].transform("size").to_numpy()
    n_categories = rankings["category"].nunique()
    hits = sum(_hits(rankings, k) for k in ks)
    return 100 * hits / (sizes * n_categories * len(ks))


def paired_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metric: str = "Avg",
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    ks: Sequence[int] = KS,
) -> Difference:
    """``metric(a) - metric(b)`` on the same queries: paired bootstrap interval, and the two-sided
    p-value of a paired permutation test of Avg (per query, the two models' hits swap with chance 1/2)."""
    a, b = align(a, b)
    point_a, reps_a = replicates(a, samples, seed, ks)
    point_b, reps_b = replicates(b, samples, seed, ks)
    interval = _interval(point_a[metric] - point_b[metric], reps_a[metric] - reps_b[metric], level)
    return Difference(interval, permutation_p_value(_per_query_avg(a, ks) - _per_query_avg(b, ks), samples, seed))


def permutation_p_value(differences: np.ndarray, samples: int = 1000, seed: int = 0) -> float:
    """Two-sided sign-flip test of ``sum(differences) == 0``; (1 + extreme) / (1 + samples), never 0."""
    observed = abs(differences.sum())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(samples, len(differences)))
    extreme = int((np.abs(signs @ differences) >= observed - 1e-12).sum())
    return (1 + extreme) / (1 + samples)
