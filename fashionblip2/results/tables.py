"""Tables 3, 4 and 5 of the paper from the evaluation files, with the paper's reported rows beside
ours (marked as reported, never mixed with computed numbers) and the chance level of our galleries;
and Table 6, beyond the paper: stage 1 on the filtered FACap against the unfiltered one.

Evaluation files: ``<dataset>.json`` and ``<dataset>_rankings.parquet`` as written by
``workflow_scripts/evaluate_model.py`` (stage1 = trained on FACap only, "without fine-tuning";
stage2 = fine-tuned on FashionIQ). Every number we compute comes with its bootstrap 95 % interval
over queries, and each comparison a table makes, with a paired test (``significance``), its p-value
adjusted (Holm) over the table's comparisons.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fashionblip2.config import unfiltered_variant
from fashionblip2.results.significance import (
    Difference,
    Interval,
    confidence_intervals,
    holm_with_bounds,
    paired_difference,
)

CATEGORY_NAMES = {"dress": "Dresses", "shirt": "Shirts", "toptee": "Tops&tees"}
REPORTED = "reported by the paper"
WITHOUT_FT, WITH_FT = "Without fine-tuning", "With fine-tuning"

# Table 3 as reported: Dresses, Shirts, Tops&tees (R@10, R@50 each), mean R@10, mean R@50, Avg.
TABLE3_REPORTED = [
    (WITHOUT_FT, "Pic2Word", 20.00, 40.20, 26.20, 43.60, 27.90, 47.40, 24.70, 43.70, 34.2),
    (WITHOUT_FT, "SEARLE (ViT-L/14)", 20.48, 43.13, 26.89, 45.58, 29.32, 49.97, 25.56, 46.23, 35.9),
    (WITHOUT_FT, "Context-I2W", 23.1, 45.3, 29.7, 48.6, 30.6, 52.9, 27.8, 48.9, 39.3),
    (WITHOUT_FT, "FTI4CIR", 24.39, 47.84, 31.35, 50.59, 32.43, 54.21, 20.39, 50.88, 40.1),
    (WITHOUT_FT, "LDRE (ViT-G/14)", 26.11, 51.12, 35.94, 58.58, 35.42, 56.67, 32.49, 55.46, 43.9),
    (WITHOUT_FT, "FashionBLIP-2", 32.52, 53.25, 34.79, 52.40, 36.66, 58.13, 34.66, 54.59, 44.6),
    (WITH_FT, "CLIP4CIR", 33.81, 59.40, 39.99, 60.45, 41.41, 65.37, 38.32, 61.74, 50.0),
    (WITH_FT, "BLIP4CIR+Bi", 42.09, 67.33, 41.76, 64.28, 46.61, 70.32, 43.49, 67.31, 55.4),
    (WITH_FT, "BLIP2-Cir", 41.57, 66.02, 46.86, 66.00, 49.44, 72.25, 45.96, 68.09, 57.0),
    (WITH_FT, "TG-CIR", 45.22, 69.66, 52.60, 72.52, 56.14, 77.10, 51.32, 73.09, 58.0),
    (WITH_FT, "FAME-ViL", 42.19, 67.38, 47.64, 68.79, 50.69, 73.07, 46.84, 69.75, 58.2),
    (WITH_FT, "Re-ranking", 48.14, 71.43, 50.15, 71.25, 55.23, 76.80, 51.17, 73.13, 62.1),
    (WITH_FT, "SPRC", 49.18, 72.43, 55.64, 73.89, 59.35, 78.58, 54.92, 74.97, 64.8),
    (WITH_FT, "UniFashion", 53.72, 73.66, 61.25, 76.67, 61.84, 80.46, 58.93, 76.93, 67.9),
    (WITH_FT, "FashionBLIP-2", 51.41, 73.53, 57.02, 75.32, 58.95, 79.60, 55.79, 76.15, 65.9),
]
# Table 4 as reported: model, pretrained on FACap, fine-tuned on FIQ, FIQ Avg, enhFIQ Avg.
TABLE4_REPORTED = [
    ("SPRC", "no", "yes", 64.85, 79.59),
    ("SPRC", "yes", "yes", 64.87, 80.29),
    ("UniFashion (released code)", "no", "yes", 65.34, 81.97),
    ("UniFashion (released code)", "yes", "yes", 64.51, 87.30),
    ("FashionBLIP-2", "no", "yes", 64.46, 80.32),
    ("FashionBLIP-2", "yes", "yes", 65.97, 87.93),
]
# Table 5 as reported: tasks, adapter, matching, then FIQ and enhFIQ Avg without and with fine-tuning.
TABLE5_REPORTED = [
    ("CIR", "no", "Global", 41.04, 87.81, 64.36, 86.42),
    ("CIR", "yes", "Global", 42.62, 88.20, 64.38, 86.75),
    ("CIR", "yes", "MH", 43.31, 89.14, 65.97, 87.93),
    ("CIR+CTR", "yes", "MH", 44.63, 89.45, 65.62, 86.93),
]


# A reported row's summary columns follow from its per-category values up to the rounding (or, in
# places, truncation) of the one or two decimals shown; beyond this they are the paper's own slips.
INCONSISTENT = "†"  # the footnote mark of such rows


def table3_inconsistencies(rows=TABLE3_REPORTED, tolerance: float = 0.1) -> dict[tuple[str, str], str]:
    """Reported Table 3 rows whose summary columns do not follow from the row's own numbers:
    (setting, model) -> what those numbers give. The reported values are kept as they are."""
    out = {}
    for setting, model, *v in rows:
        r10, r50 = (v[0] + v[2] + v[4]) / 3, (v[1] + v[3] + v[5]) / 3
        found = []
        for k, computed, reported in ((10, r10, v[6]), (50, r50, v[7])):
            if abs(computed - reported) > tolerance:
                found.append(f"its per-category R@{k} average {computed:.2f}, not the reported mean {reported:.2f}")
        if abs((v[6] + v[7]) / 2 - v[8]) > tolerance:
            found.append(f"its reported means give Avg {(v[6] + v[7]) / 2:.2f}, not {v[8]:.1f}")
        if found and abs((r10 + r50) / 2 - v[8]) > tolerance:
            found.append(f"its per-category values give Avg {(r10 + r50) / 2:.2f}")
        if found:
            out[(setting, model)] = f"{model} ({setting.lower()}): " + "; ".join(found)
    return out


def table3_inconsistency_notes() -> list[str]:
    found = table3_inconsistencies()
    if not found:
        return []
    return [
        f"{INCONSISTENT} Reported rows that do not add up in the paper, kept as reported. "
        + ". ".join(found.values())
        + "."
    ]


class MissingEvaluation(FileNotFoundError):
    pass


@dataclass(frozen=True)
class Evaluation:
    """One model on one evaluation set: its summary (``<dataset>.json``), its per-query hits
    (``<dataset>_rankings.parquet``) and the bootstrap interval of every number."""

    result: dict[str, Any]
    rankings: pd.DataFrame
    intervals: dict[str, Interval]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.result["stage"], self.result["variant"], self.result["dataset"]


class Evaluations:
    """The evaluations a table reads, found by (stage, variant, dataset) from the files' own contents:
    the workflow passes the files, the tables never rebuild their paths."""

    def __init__(self, items: list[Evaluation], bootstrap: Bootstrap) -> None:
        self.items = {e.key: e for e in items}
        self.bootstrap = bootstrap

    @classmethod
    def load(
        cls,
        results: Sequence[str | os.PathLike[str]],
        rankings: Sequence[str | os.PathLike[str]],
        bootstrap: Bootstrap,
    ) -> Evaluations:
        """``results[i]`` (a ``<dataset>.json``) and ``rankings[i]`` (its ``_rankings.parquet``)."""
        if len(results) != len(rankings):
            raise ValueError(f"{len(results)} evaluation files but {len(rankings)} rankings files")
        items = []
        for result_path, rankings_path in zip(results, rankings, strict=True):
            result = json.loads(Path(result_path).read_text())
            frame = pd.read_parquet(rankings_path)
            counts = frame["category"].value_counts().to_dict()
            expected = {c: r["queries"] for c, r in result["categories"].items() if r["queries"]}
            if counts != expected:
                raise ValueError(f"{rankings_path} does not hold the queries of {result_path} ({counts} vs {expected})")
            intervals = confidence_intervals(frame, bootstrap.samples, bootstrap.seed, bootstrap.level)
            items.append(Evaluation(result, frame, intervals))
        return cls(items, bootstrap)

    def __getitem__(self, key: tuple[str, str, str]) -> Evaluation:
        if key not in self.items:
            stage, variant, dataset = key
            raise MissingEvaluation(f"no evaluation of {variant} ({stage}) on {dataset} among the files given")
        return self.items[key]

    def get(self, key: tuple[str, str, str]) -> Evaluation | None:
        return self.items.get(key)

    def difference(self, a: tuple[str, str, str], b: tuple[str, str, str], metric: str = "Avg") -> Difference:
        """``metric(a) - metric(b)``, paired over the queries both were evaluated on."""
        bs = self.bootstrap
        return paired_difference(self[a].rankings, self[b].rankings, metric, bs.samples, bs.seed, bs.level)


@dataclass(frozen=True)
class Bootstrap:
    """How the intervals are drawn (config ``evaluation.bootstrap``)."""

    samples: int
    seed: int
    level: float = 0.95


def _recall_columns(evaluation: Evaluation, categories: list[str], chance: bool = False) -> dict[str, Any]:
    """Table 3's columns: our rows as intervals; the chance row (exact, no sampling) as numbers."""
    cols: dict[str, Any] = {}
    result, ci = evaluation.result, evaluation.intervals
    for c in categories:
        r = result["categories"].get(c, {})
        for k in (10, 50):
            if chance:
                cols[f"{CATEGORY_NAMES[c]} R@{k}"] = r.get(f"chance R@{k}", float("nan"))
            else:
                cols[f"{CATEGORY_NAMES[c]} R@{k}"] = ci.get(f"{c} R@{k}", float("nan"))
    if chance:
        summary = result["chance"]
        return cols | {"Avg R@10": summary["mean R@10"], "Avg R@50": summary["mean R@50"], "Avg": summary["Avg"]}
    return cols | {"Avg R@10": ci["mean R@10"], "Avg R@50": ci["mean R@50"], "Avg": ci["Avg"]}


def table3(evals: Evaluations, spec: dict[str, str], origin: str) -> pd.DataFrame:
    categories = list(CATEGORY_NAMES)
    zero = evals["stage1", spec["without_finetuning"], "fashioniq"]
    tuned = evals["stage2", spec["with_finetuning"], "fashioniq"]
    rows = [
        {
            "Setting": "-",
            "Model": "chance (random ranking)",
            "Rows from": origin,
            **_recall_columns(zero, categories, True),
        },
        {
            "Setting": WITHOUT_FT,
            "Model": f"FashionBLIP-2 ({spec['without_finetuning']})",
            "Rows from": origin,
            **_recall_columns(zero, categories),
        },
        {
            "Setting": WITH_FT,
            "Model": f"FashionBLIP-2 ({spec['with_finetuning']})",
            "Rows from": origin,
            **_recall_columns(tuned, categories),
        },
    ]
    columns = [f"{CATEGORY_NAMES[c]} R@{k}" for c in categories for k in (10, 50)] + ["Avg R@10", "Avg R@50", "Avg"]
    slips = table3_inconsistencies()
    for setting, model, *values in TABLE3_REPORTED:
        name = f"{model} {INCONSISTENT}" if (setting, model) in slips else model
        rows.append(
            {"Setting": setting, "Model": name, "Rows from": REPORTED, **dict(zip(columns, values, strict=True))}
        )
    return pd.DataFrame(rows, columns=["Setting", "Model", "Rows from", *columns])


def table3_comparisons(evals: Evaluations, spec: dict[str, str]) -> pd.DataFrame:
    """Table 3's two rows of ours on the same queries. They are the paper's rows, so two variants
    (as configured): the difference is fine-tuning and the variants' own, not fine-tuning alone
    (Table 5 holds each variant before and after)."""
    tuned, zero = ("stage2", spec["with_finetuning"]), ("stage1", spec["without_finetuning"])
    label = f"with fine-tuning ({tuned[1]}) minus without ({zero[1]})"
    return comparisons(evals, [(label, tuned, zero)], datasets=("fashioniq",))


def table4(evals: Evaluations, spec: list[dict[str, str]], origin: str) -> pd.DataFrame:
    rows = []
    for entry in spec:
        for pretrained, variant in (("no", entry["without_facap"]), ("yes", entry["with_facap"])):
            rows.append(
                {
                    "Model": f"{entry['model']} ({variant})",
                    "Pretrain on FACap": pretrained,
                    "Fine-tune on FIQ": "yes",
                    "FIQ": evals["stage2", variant, "fashioniq"].intervals["Avg"],
                    "enhFIQ": evals["stage2", variant, "enhfashioniq"].intervals["Avg"],
                    "Rows from": origin,
                }
            )
    for model, pre, ft, fiq, enh in TABLE4_REPORTED:
        rows.append(
            {
                "Model": model,
                "Pretrain on FACap": pre,
                "Fine-tune on FIQ": ft,
                "FIQ": fiq,
                "enhFIQ": enh,
                "Rows from": REPORTED,
            }
        )
    return pd.DataFrame(rows)


def table4_comparisons(evals: Evaluations, spec: list[dict[str, str]]) -> pd.DataFrame:
    """Per model, with FACap minus without, both fine-tuned."""
    pairs = [
        (f"{e['model']}: with FACap minus without", ("stage2", e["with_facap"]), ("stage2", e["without_facap"]))
        for e in spec
    ]
    return comparisons(evals, pairs)


TABLE5_SETTINGS = (("stage1", "no fine-tuning"), ("stage2", "w/ fine-tuning"))


def table5(evals: Evaluations, variants: list[str], specs: dict[str, dict[str, Any]], origin: str) -> pd.DataFrame:
    rows = []
    for name in variants:
        v = specs[name]
        row = {
            "Variant": name,
            "Training tasks": "+".join(x.upper() for x in v["losses"]),
            "Adapter": "yes" if v["adapters"] else "no",
            "Matching": "MH" if v["matching"] == "multihead" else "Global",
        }
        for stage, setting in TABLE5_SETTINGS:
            for dataset, short in DATASETS.items():
                row[f"{setting} {short}"] = evals[stage, name, dataset].intervals["Avg"]
        rows.append(row | {"Rows from": origin})
    keys = ["no fine-tuning FIQ", "no fine-tuning enhFIQ", "w/ fine-tuning FIQ", "w/ fine-tuning enhFIQ"]
    for tasks, adapter, matching, *values in TABLE5_REPORTED:
        rows.append(
            {
                "Variant": "-",
                "Training tasks": tasks,
                "Adapter": adapter,
                "Matching": matching,
                **dict(zip(keys, values, strict=True)),
                "Rows from": REPORTED,
            }
        )
    return pd.DataFrame(rows)


def table5_comparisons(evals: Evaluations, variants: list[str]) -> pd.DataFrame:
    """Each row against the row above it (each adds one component), in both settings; then what
    fine-tuning does to each variant (its own model after minus before)."""
    pairs = [
        (f"{b} minus {a} ({setting})", (stage, b), (stage, a))
        for stage, setting in TABLE5_SETTINGS
        for a, b in zip(variants, variants[1:], strict=False)
    ]
    pairs += [(f"{v}: with minus without fine-tuning", ("stage2", v), ("stage1", v)) for v in variants]
    return comparisons(evals, pairs)


def table6(evals: Evaluations, spec: dict[str, list[str]], origin: str) -> pd.DataFrame:
    """Per configured variant, the model trained on the unfiltered FACap and the one trained on the
    filtered FACap (the variant itself), both before and after the same FashionIQ fine-tuning. The
    paper has no such table: no reported rows."""
    rows = []
    for base in spec["variants"]:
        # The unfiltered row first: the filtered one below it reads as what filtering changed.
        for facap, name in (("unfiltered", unfiltered_variant(base)), ("filtered", base)):
            row: dict[str, Any] = {"Variant": name, "FACap": facap}
            for stage, setting in TABLE5_SETTINGS:
                for dataset, short in DATASETS.items():
                    row[f"{setting} {short}"] = evals[stage, name, dataset].intervals["Avg"]
            rows.append(row | {"Rows from": origin})
    return pd.DataFrame(rows)


def table6_comparisons(evals: Evaluations, spec: dict[str, list[str]]) -> pd.DataFrame:
    """Per variant and setting, filtered minus unfiltered FACap: stage 2 says whether what filtering
    changes survives the fine-tuning both models share."""
    pairs = [
        (f"{v}: filtered minus unfiltered FACap ({setting})", (stage, v), (stage, unfiltered_variant(v)))
        for v in spec["variants"]
        for stage, setting in TABLE5_SETTINGS
    ]
    return comparisons(evals, pairs)


DATASETS = {"fashioniq": "FIQ", "enhfashioniq": "enhFIQ"}


ALPHA = 0.05  # the family-wise error rate of "Significant (95 %)"
P_FLOOR = "p at floor"  # the .csv's flag: no permutation draw was as extreme (the p is the test's smallest)
# The Differences columns: the .csv adds the interval bounds; the old names are kept for their readers.
COMPARISON_COLUMNS = [
    "Comparison",
    "Evaluation set",
    "Avg difference",
    "p (permutation)",
    "p (Holm)",
    P_FLOOR,
    "Significant (95 %)",
]


def comparisons(
    evals: Evaluations,
    pairs: list[tuple[str, tuple[str, str], tuple[str, str]]],
    datasets: Sequence[str] = tuple(DATASETS),
) -> pd.DataFrame:
    """One row per (comparison, evaluation set): the Avg difference with its paired bootstrap interval
    (unadjusted), the permutation test's p-value, its Holm-adjusted p over all the rows returned (the
    family: one table's Differences section, both evaluation sets), whether the raw p is at the
    test's floor, and "Significant (95 %)": the Holm p is below ``ALPHA``.

    The p columns hold :class:`PValue` numbers: the .csv gets the numbers, the Markdown prints one
    known only to be below a bound as ``< bound``."""
    found = []
    for label, (stage_a, a), (stage_b, b) in pairs:
        for dataset in datasets:
            found.append((label, dataset, evals.difference((stage_a, a, dataset), (stage_b, b, dataset))))
    raw, adjusted = holm_with_bounds([d.p_value for *_, d in found], evals.bootstrap.samples)
    rows = [
        {
            "Comparison": label,
            "Evaluation set": DATASETS[dataset],
            "Avg difference": d.interval,
            "p (permutation)": p,
            "p (Holm)": holm_p,
            P_FLOOR: "yes" if d.p_at_floor else "no",
            "Significant (95 %)": "yes" if holm_p < ALPHA else "no",
        }
        for (label, dataset, d), p, holm_p in zip(found, raw, adjusted, strict=True)
    ]
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for column in ("p (permutation)", "p (Holm)"):
        # Object columns: pandas would otherwise turn the PValues into plain floats and lose the bound.
        frame[column] = pd.Series([r[column] for r in rows], index=frame.index, dtype=object)
    return frame


def interval_note(bootstrap: Bootstrap) -> str:
    level = f"{bootstrap.level:.0%}"
    return (
        f"Our cells: value ± half the width of its {level} bootstrap interval over queries ({bootstrap.samples} "
        f"draws, seed {bootstrap.seed}, queries resampled within each category); the .csv has the bounds."
    )


def differences_note(bootstrap: Bootstrap, rows: int) -> str:
    """What the Differences section shows, and what "Significant (95 %)" means there."""
    draws = bootstrap.samples
    return (
        f"Differences (section below): each row's Avg difference as its label reads, on the same queries, with its "
        f"paired {bootstrap.level:.0%} bootstrap interval (unadjusted: each interval holds for its own row), the "
        f"p-value of a two-sided paired permutation test of Avg ({draws} sign-flip draws, seed {bootstrap.seed}) "
        f"and that p adjusted by Holm's step-down over the section's {rows} rows (both evaluation sets). "
        f"'Significant (95 %)' is Holm p < {ALPHA:g}: it holds for the section's comparisons together, and an "
        f"interval that excludes 0 is not enough for it. With {draws} draws the smallest p the test gives is "
        f"1/{draws + 1}: a p shown as '< {1 / draws:.2g}' had no draw as extreme (the .csv keeps the number and "
        f"says so in '{P_FLOOR}'), and a Holm p shown as '< x' is bounded by such p-values."
    )


def chance_note(evals: Evaluations, stage: str, variant: str) -> str:
    parts = []
    for dataset in DATASETS:
        found = evals.get((stage, variant, dataset))
        if found is None:
            continue
        r = found.result
        galleries = ", ".join(f"{c} {v['gallery']}" for c, v in r["categories"].items())
        queries = ", ".join(f"{c} {v['queries']}" for c, v in r["categories"].items())
        parts.append(f"{dataset}: Avg {r['chance']['Avg']:.2f} (gallery sizes {galleries}; queries {queries})")
    return "Chance level (random ranking) of our galleries: " + "; ".join(parts) + "."


FIGURE5_METRICS = ("mean R@10", "mean R@50", "Avg")


def fraction_series(
    evals: Evaluations, names: list[tuple[float, str]]
) -> tuple[dict[str, dict[str, list[Interval | float]]], pd.DataFrame]:
    """Figure 5's data: per evaluation set, mean R@10, mean R@50 and Avg (intervals) and the chance
    Avg of each (fraction, variant) trained on FACap only; also as one table row per fraction."""
    series: dict[str, dict[str, list[Interval | float]]] = {}
    for dataset, title in (("fashioniq", "FashionIQ val"), ("enhfashioniq", "enhFashionIQ")):
        found = [evals["stage1", v, dataset] for _, v in names]
        series[title] = {m: [e.intervals[m] for e in found] for m in FIGURE5_METRICS}
        series[title]["chance Avg"] = [e.result["chance"]["Avg"] for e in found]
    rows = [
        {"fraction": f, "variant": v, **{f"{d} {m}": series[d][m][i] for d in series for m in series[d]}}
        for i, (f, v) in enumerate(names)
    ]
    return series, pd.DataFrame(rows)


def figure5_comparisons(evals: Evaluations, names: list[tuple[float, str]]) -> pd.DataFrame:
    """Each fraction against the next larger one (does more FACap help?), without fine-tuning."""
    ordered = sorted(names)
    pairs = [
        (f"{100 * big:g} % minus {100 * small:g} % of FACap", ("stage1", b), ("stage1", a))
        for (small, a), (big, b) in zip(ordered, ordered[1:], strict=False)
    ]
    return comparisons(evals, pairs)
