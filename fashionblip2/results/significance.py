"""How sure a recall is: bootstrap confidence intervals over queries, and paired tests between two
models evaluated on the same queries.

Every FashionIQ-protocol number is a linear function of per-query hits: R@K of a category is the
mean of its queries' hit@K, the means and Avg are means over categories. A bootstrap replicate
therefore resamples each category's queries with replacement (stratified, as the protocol scores
each category on its own) and recomputes every number from the same draw. The draw depends only on
the seed and the category sizes, so two models scored on the same queries get the same draws: the
difference of their replicates is the paired bootstrap of their difference. The paired permutation
test flips, per query, which model's hits are which.

A table makes several comparisons at once; :func:`holm` adjusts their p-values together (Holm's
step-down), so that "significant" holds for the table's whole family of comparisons at 5 %, not
for each comparison alone.
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
    """``a - b`` on the same queries: the paired bootstrap interval and the permutation p-value
    (from ``draws`` sign flips; 0 when not known)."""

    interval: Interval
    p_value: float
    draws: int = 0

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (at the level it was computed for), unadjusted for other comparisons."""
        return self.interval.low > 0 or self.interval.high < 0

    @property
    def p_at_floor(self) -> bool:
        """No draw was as extreme as the observed difference: the p-value is the test's smallest."""
        return self.draws > 0 and at_floor(self.p_value, self.draws)


def permutation_floor(draws: int) -> float:
    """The smallest p-value :func:`permutation_p_value` gives with ``draws`` sign flips: (0 + 1) / (draws + 1)."""
    return 1 / (draws + 1)


def at_floor(p_value: float, draws: int) -> bool:
    return bool(np.isclose(p_value, permutation_floor(draws), rtol=1e-9, atol=0))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the order given: the i-th smallest of m is multiplied by m - i + 1
    (i from 1), each adjusted value is at least the one before it in sorted order (step-down: a
    comparison is rejected only if every smaller p was), and none exceeds 1."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = stepped
    return adjusted


class PValue(float):
    """A p-value that prints ``< bound`` (with a float format, as the Markdown tables format their
    numbers) when it is only known to be below ``bound``, and stays the plain number everywhere else
    (arithmetic, comparisons, the .csv): a permutation p at its floor (``< 1/draws``) printed as
    0.001 would read as a measured p of 0.001."""

    bound: float | None

    def __new__(cls, value: float, bound: float | None = None) -> PValue:
        self = super().__new__(cls, value)
        self.bound = bound
        return self

    def __format__(self, spec: str) -> str:
        if self.bound is not None and spec:
            return f"< {self.bound:.2g}"
        return super().__format__(spec)

    def __reduce__(self) -> tuple[type[PValue], tuple[float, float | None]]:  # copies keep the bound
        return (PValue, (float(self), self.bound))


def holm_with_bounds(p_values: Sequence[float], draws: int) -> tuple[list[PValue], list[PValue]]:
    """Raw and Holm-adjusted p-values of one family, each a :class:`PValue`.

    A raw p at the permutation floor is only known to be below 1/draws. Holm is increasing in each
    p, so replacing those by 1/draws bounds every adjusted p from above: where that bound is larger
    than the adjusted value, a p at the floor decides it, and it prints as ``< bound``; the number
    itself stays the Holm p of the raw values."""
    p = np.asarray(p_values, dtype=np.float64)
    floored = np.array([draws > 0 and at_floor(x, draws) for x in p], dtype=bool)
    adjusted = holm(p)
    bounds = holm(np.where(floored, 1 / max(draws, 1), p))
    raw = [PValue(x, 1 / draws if f else None) for x, f in zip(p, floored, strict=True)]
    held = [PValue(a, b if b > a * (1 + 1e-9) else None) for a, b in zip(adjusted, bounds, strict=True)]
    return raw, held


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
    p = permutation_p_value(_per_query_avg(a, ks) - _per_query_avg(b, ks), samples, seed)
    return Difference(interval, p, samples)


def permutation_p_value(differences: np.ndarray, samples: int = 1000, seed: int = 0) -> float:
    """Two-sided sign-flip test of ``sum(differences) == 0``; (1 + extreme) / (1 + samples), never 0:
    at least :func:`permutation_floor` (no draw as extreme), and 1.0 when the sum is exactly 0."""
    observed = abs(differences.sum())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(samples, len(differences)))
    extreme = int((np.abs(signs @ differences) >= observed - 1e-12).sum())
    return (1 + extreme) / (1 + samples)
