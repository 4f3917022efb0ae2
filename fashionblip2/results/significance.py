"""How sure a recall is: bootstrap confidence intervals over training seeds and queries, and paired
tests between two models evaluated on the same queries with the same seeds.

Every FashionIQ-protocol number is a linear function of per-query hits: R@K of a category is the
mean of its queries' hit@K, the means and Avg are means over categories. A model trained with
several seeds has one set of hits per seed; its number is the mean over the seeds. A bootstrap
replicate resamples each category's queries with replacement (stratified, as the protocol scores
each category on its own) and, independently, the seeds with replacement, and recomputes every
number from that draw (the mean over the drawn seeds, each on the drawn queries): a two-way
(crossed) bootstrap. The draw depends only on the bootstrap's seed, the category sizes and the
number of seeds, so two models scored on the same queries with as many seeds get the same draws:
the difference of their replicates is the paired bootstrap of their difference, paired by query and
by seed. With one seed the seed part of the draw is the identity and everything is the bootstrap
over queries alone.

The paired test: with one seed, a permutation test that flips, per query, which model's hits are
which; with several seeds, the two-sided bootstrap p of the paired replicates (a query-level
permutation test would call one seed's luck significant).

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

PERMUTATION_TEST = "permutation over queries"  # one seed: the paired sign-flip test
BOOTSTRAP_TEST = "bootstrap over seeds and queries"  # several seeds: the two-way bootstrap's own p


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
class Floor:
    """The smallest p-value a test gives with its number of draws (``value``: no draw as extreme as
    the observation), and what such a p is only known to be below (``bound``, what it prints as)."""

    value: float
    bound: float

    @classmethod
    def permutation(cls, draws: int) -> Floor:
        """The sign-flip test: (0 + 1) / (draws + 1), below 1/draws."""
        return cls(permutation_floor(draws), 1 / draws)

    @classmethod
    def bootstrap(cls, draws: int) -> Floor:
        """The two-sided bootstrap p: 2 (0 + 1) / (draws + 1), below 2/draws."""
        return cls(bootstrap_floor(draws), 2 / draws)

    def reached(self, p_value: float) -> bool:
        return bool(np.isclose(p_value, self.value, rtol=1e-9, atol=0))


@dataclass(frozen=True)
class Difference:
    """``a - b`` on the same queries (and the same seeds): the paired bootstrap interval and the
    p-value of ``test`` from ``draws`` draws (0 when not known), over ``seeds`` training seeds."""

    interval: Interval
    p_value: float
    draws: int = 0
    test: str = PERMUTATION_TEST
    seeds: int = 1

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (at the level it was computed for), unadjusted for other comparisons."""
        return self.interval.low > 0 or self.interval.high < 0

    @property
    def floor(self) -> Floor | None:
        """The smallest p its test gives (None when the draws are not known)."""
        if self.draws <= 0:
            return None
        return Floor.bootstrap(self.draws) if self.test == BOOTSTRAP_TEST else Floor.permutation(self.draws)

    @property
    def p_at_floor(self) -> bool:
        """No draw was as extreme as the observed difference: the p-value is the test's smallest."""
        return self.floor is not None and self.floor.reached(self.p_value)


def permutation_floor(draws: int) -> float:
    """The smallest p-value :func:`permutation_p_value` gives with ``draws`` sign flips: (0 + 1) / (draws + 1)."""
    return 1 / (draws + 1)


def bootstrap_floor(draws: int) -> float:
    """The smallest p-value :func:`bootstrap_p_value` gives with ``draws`` replicates: 2 (0 + 1) / (draws + 1)."""
    return 2 / (draws + 1)


def at_floor(p_value: float, draws: int) -> bool:
    """Whether a permutation p from ``draws`` sign flips is at that test's floor (see :meth:`Floor.reached`)."""
    return Floor.permutation(draws).reached(p_value)


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


def holm_with_bounds(
    p_values: Sequence[float], floors: Sequence[Floor | None] | None = None, draws: int = 0
) -> tuple[list[PValue], list[PValue]]:
    """Raw and Holm-adjusted p-values of one family, each a :class:`PValue`.

    ``floors``: each p's test floor (None: not known); without them, ``draws`` is the number of
    draws of a family of permutation p-values alike (0: no floors). A raw p at its floor is only
    known to be below the floor's bound (1/draws for the permutation test, 2/draws for the bootstrap
    p). Holm is increasing in each p, so replacing those by their bounds bounds every adjusted p from
    above: where that bound is larger than the adjusted value, a p at a floor decides it, and it
    prints as ``< bound``; the number itself stays the Holm p of the raw values."""
    p = np.asarray(p_values, dtype=np.float64)
    if floors is None:
        floors = [Floor.permutation(draws) if draws > 0 else None] * len(p)
    if len(floors) != len(p):
        raise ValueError(f"{len(p)} p-values but {len(floors)} floors")
    floored = [f is not None and f.reached(x) for x, f in zip(p, floors, strict=True)]
    adjusted = holm(p)
    bounded = [f.bound if at else x for x, f, at in zip(p, floors, floored, strict=True)]
    bounds = holm(bounded)
    raw = [PValue(x, f.bound if at else None) for x, f, at in zip(p, floors, floored, strict=True)]
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


def _seed_draws(seeds: int, samples: int, seed: int) -> np.ndarray:
    """Resampled seed positions, (samples, seeds), with replacement; the same for every model with as
    many seeds, and independent of the query draws (a child of the bootstrap seed's sequence, which
    the query draws do not use). One seed: always that seed."""
    if seeds == 1:
        return np.zeros((samples, 1), dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    return rng.integers(0, seeds, size=(samples, seeds))


def _by_category(rankings: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {c: part for c, part in rankings.groupby("category", sort=True)}


def _as_seeds(rankings: pd.DataFrame | Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    seeds = [rankings] if isinstance(rankings, pd.DataFrame) else list(rankings)
    if not seeds:
        raise ValueError("no rankings: a model needs at least one seed's")
    return seeds


def _check_one_order(seeds: Sequence[pd.DataFrame]) -> None:
    first = seeds[0][QUERY_KEY].reset_index(drop=True)
    for n, other in enumerate(seeds[1:], start=1):
        if len(other) != len(first) or not other[QUERY_KEY].reset_index(drop=True).equals(first):
            raise ValueError(f"seed {n}'s rankings are not the first seed's queries in the same order (align_seeds)")


def _seed_replicates(
    seeds: Sequence[pd.DataFrame], draws: dict[str, np.ndarray], ks: Sequence[int]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per metric: each seed's value on the queries as given, (seeds,), and on each query draw,
    (seeds, samples); every seed on the same draws (its rankings in one query order)."""
    points, reps = [], []
    for frame in seeds:
        parts = _by_category(frame)
        points.append(_metrics_from_means({c: {k: _hits(p, k).mean() for k in ks} for c, p in parts.items()}, ks))
        reps.append(
            _metrics_from_means({c: {k: _hits(p, k)[draws[c]].mean(axis=1) for k in ks} for c, p in parts.items()}, ks)
        )
    names = list(points[0])
    return (
        {m: np.array([float(p[m]) for p in points]) for m in names},
        {m: np.stack([r[m] for r in reps]) for m in names},
    )


def _over_seeds(per_seed: np.ndarray, seed_draws: np.ndarray) -> np.ndarray:
    """The two-way replicates: per draw, the mean over the drawn seeds of their value on that
    draw's queries. ``per_seed`` (seeds, samples), ``seed_draws`` (samples, seeds)."""
    columns = np.arange(per_seed.shape[1])[:, None]
    return per_seed[seed_draws, columns].mean(axis=1)


def replicates(
    rankings: pd.DataFrame | Sequence[pd.DataFrame], samples: int, seed: int, ks: Sequence[int] = KS
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every metric on the queries as given (the mean over the seeds), and its ``samples`` bootstrap
    replicates (queries and seeds resampled). ``rankings``: one seed's, or each seed's in one query
    order."""
    seeds = _as_seeds(rankings)
    _check_one_order(seeds)
    draws = _draws({c: len(p) for c, p in _by_category(seeds[0]).items()}, samples, seed)
    points, per_seed = _seed_replicates(seeds, draws, ks)
    chosen = _seed_draws(len(seeds), samples, seed)
    return (
        {m: float(v.mean()) for m, v in points.items()},
        {m: _over_seeds(v, chosen) for m, v in per_seed.items()},
    )


def _interval(value: float, reps: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


def confidence_intervals(
    rankings: pd.DataFrame | Sequence[pd.DataFrame],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    ks: Sequence[int] = KS,
) -> dict[str, Interval]:
    """Percentile bootstrap interval of every metric (see :func:`metric_names`): over queries for one
    seed's rankings; over seeds and queries (two-way) for several seeds' rankings in one query order,
    around the mean over the seeds."""
    point, reps = replicates(rankings, samples, seed, ks)
    return {m: _interval(point[m], reps[m], level) for m in point}


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(QUERY_KEY, kind="stable").reset_index(drop=True)


def align(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two rankings in one query order; they must hold the same queries (same evaluation set)."""
    a, b = _sorted(a), _sorted(b)
    if len(a) != len(b) or not a[QUERY_KEY].equals(b[QUERY_KEY]):
        raise ValueError("a paired comparison needs the same queries on both sides (same evaluation set)")
    return a, b


def align_seeds(seeds: Sequence[pd.DataFrame], names: Sequence[str] | None = None) -> list[pd.DataFrame]:
    """Each seed's rankings in the first seed's query order (the first kept as it is); every seed
    must hold the same queries. ``names`` (e.g. the files) name the ones that do not."""
    names = list(names) if names is not None else [f"seed {n}" for n in range(len(seeds))]
    first = seeds[0].reset_index(drop=True)
    order = first.sort_values(QUERY_KEY, kind="stable").index.to_numpy()
    back = np.empty_like(order)
    back[order] = np.arange(len(order))  # position in sorted order -> position in the first seed's
    keys = first.iloc[order][QUERY_KEY].reset_index(drop=True)
    out = [first]
    for name, frame in zip(names[1:], seeds[1:], strict=True):
        ordered = _sorted(frame)
        if len(ordered) != len(keys) or not ordered[QUERY_KEY].equals(keys):
            raise ValueError(
                f"{name} does not hold the same queries as {names[0]}: every seed of a model must be "
                "evaluated on the same queries"
            )
        out.append(ordered.iloc[back].reset_index(drop=True))
    return out


def _per_query_avg(rankings: pd.DataFrame, ks: Sequence[int]) -> np.ndarray:
    """Each query's share of Avg: Avg is the sum of these over the queries."""
    sizes = rankings.groupby("category")["category"].transform("size").to_numpy()
    n_categories = rankings["category"].nunique()
    hits = sum(_hits(rankings, k) for k in ks)
    return 100 * hits / (sizes * n_categories * len(ks))


def paired_difference(
    a: pd.DataFrame | Sequence[pd.DataFrame],
    b: pd.DataFrame | Sequence[pd.DataFrame],
    metric: str = "Avg",
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    ks: Sequence[int] = KS,
) -> Difference:
    """``metric(a) - metric(b)`` on the same queries, paired by seed when each side has several
    (``a[s]`` and ``b[s]``: the same training seed s; as many on both sides).

    The interval: per seed s, ``metric(a, s) - metric(b, s)`` on one query draw, shared by every
    seed and both sides; the seeds drawn with replacement, together for both sides; the replicate
    is the mean over the drawn seeds. The p-value, of Avg: with one seed the paired permutation test
    (per query, the two models' hits swap with chance 1/2); with several, the two-sided bootstrap p
    of those same replicates (:func:`bootstrap_p_value`)."""
    seeds_a, seeds_b = _as_seeds(a), _as_seeds(b)
    if len(seeds_a) != len(seeds_b):
        raise ValueError(f"a paired comparison needs as many seeds on both sides ({len(seeds_a)} vs {len(seeds_b)})")
    pairs = [align(x, y) for x, y in zip(seeds_a, seeds_b, strict=True)]
    firsts = pairs[0][0][QUERY_KEY]
    if any(not x[QUERY_KEY].equals(firsts) for x, _ in pairs[1:]):
        raise ValueError("a paired comparison needs the same queries for every seed")
    draws = _draws({c: len(p) for c, p in _by_category(pairs[0][0]).items()}, samples, seed)
    points_a, per_seed_a = _seed_replicates([x for x, _ in pairs], draws, ks)
    points_b, per_seed_b = _seed_replicates([y for _, y in pairs], draws, ks)
    chosen = _seed_draws(len(pairs), samples, seed)
    reps = {m: _over_seeds(per_seed_a[m] - per_seed_b[m], chosen) for m in (metric, "Avg")}
    interval = _interval(float((points_a[metric] - points_b[metric]).mean()), reps[metric], level)
    if len(pairs) == 1:
        x, y = pairs[0]
        p = permutation_p_value(_per_query_avg(x, ks) - _per_query_avg(y, ks), samples, seed)
        return Difference(interval, p, samples, PERMUTATION_TEST, 1)
    return Difference(interval, bootstrap_p_value(reps["Avg"]), samples, BOOTSTRAP_TEST, len(pairs))


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


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p of a difference from its B replicates ``d*``:
    min(1, 2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1)); at least :func:`bootstrap_floor`
    (every replicate on one side of 0), and 1.0 when they sit on 0."""
    d = np.asarray(replicates, dtype=np.float64)
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    return min(1.0, 2 * min(1 + below, 1 + above) / (len(d) + 1))
