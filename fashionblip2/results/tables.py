"""Tables 3, 4 and 5 of the paper from the evaluation files, with the paper's reported rows beside
ours (marked as reported, never mixed with computed numbers) and the chance level of our galleries;
and Table 6, beyond the paper: stage 1 on the filtered FACap against the unfiltered one.

Evaluation files: ``<dataset>.json`` and ``<dataset>_rankings.parquet`` as written by
``workflow_scripts/evaluate_model.py`` (stage1 = trained on FACap only, "without fine-tuning";
stage2 = fine-tuned on FashionIQ), one pair per training seed (the JSON's ``"seed"``, 0 when absent)
and checkpoint (``"checkpoint"``: ``"last"``, the model after the last step, the default when
absent; or ``"best"``, the validation point training chose on FashionIQ val, as SPRC's
``--save-best``, with its ``"step"``; FashionIQ only). Every number we compute is the mean over the
seeds with its two-way bootstrap 95 % interval over seeds and queries (over queries alone with one
seed), and each comparison a table makes, on the last checkpoints, has a paired test
(``significance``), its p-value adjusted (Holm) over the table's comparisons.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fashionblip2.config import unfiltered_variant
from fashionblip2.results.significance import (
    BOOTSTRAP_TEST,
    PERMUTATION_TEST,
    Difference,
    Interval,
    align_seeds,
    bootstrap_floor,
    confidence_intervals,
    holm_with_bounds,
    paired_difference,
    permutation_floor,
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


LAST, BEST = "last", "best"  # the JSON's "checkpoint": the model after the last step; the best on val
CHECKPOINTS = (LAST, BEST)


def seed_of(result: dict[str, Any]) -> int:
    """An evaluation's training seed: its ``"seed"``, 0 for a file from before seeds were recorded."""
    return int(result.get("seed", 0))


def checkpoint_of(result: dict[str, Any]) -> str:
    """``"last"`` (also a file without ``"checkpoint"``) or ``"best"``."""
    checkpoint = result.get("checkpoint", LAST)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {checkpoint!r} (one of {', '.join(CHECKPOINTS)})")
    return checkpoint


def _seeds_text(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


@dataclass(frozen=True)
class Evaluation:
    """One model on one evaluation set at one checkpoint, over its training seeds (ascending): each
    seed's summary (``<dataset>.json``), each seed's per-query hits (``<dataset>_rankings.parquet``,
    every seed's in the first seed's query order) and the interval of every number: the mean over
    the seeds, with its two-way bootstrap interval over seeds and queries."""

    results: tuple[dict[str, Any], ...]
    seed_rankings: tuple[pd.DataFrame, ...]
    intervals: dict[str, Interval]
    files: tuple[str, ...] = ()  # the summaries read, per seed

    @property
    def result(self) -> dict[str, Any]:
        """The first seed's summary: what is the same for every seed (the queries, the galleries,
        the chance level) is read here; the recalls of the seeds are in ``intervals``."""
        return self.results[0]

    @property
    def rankings(self) -> pd.DataFrame:
        """The first seed's per-query rankings (Figure 6 shows one model, this seed's)."""
        return self.seed_rankings[0]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(seed_of(r) for r in self.results)

    @property
    def checkpoint(self) -> str:
        return checkpoint_of(self.result)

    @property
    def steps(self) -> tuple[int | None, ...]:
        """Per seed, the step training chose (a best-on-val evaluation's ``"step"``; None: not recorded)."""
        return tuple(r.get("step") for r in self.results)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.result["stage"], self.result["variant"], self.result["dataset"], self.checkpoint


def _describe(key: tuple[str, ...]) -> str:
    stage, variant, dataset, checkpoint = key
    which = "best-on-val evaluation" if checkpoint == BEST else "evaluation"
    return f"{which} of {variant} ({stage}) on {dataset}"


class Evaluations:
    """The evaluations a table reads, found by (stage, variant, dataset, checkpoint) from the files'
    own contents: the workflow passes the files, the tables never rebuild their paths.
    ``evals[stage, variant, dataset]`` is the last checkpoint; ``evals[stage, variant, dataset,
    "best"]`` (or :meth:`best`) the best on val."""

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
        """``results[i]`` (a ``<dataset>.json``) and ``rankings[i]`` (its ``_rankings.parquet``), every
        seed's and checkpoint's, in any order: grouped by (stage, variant, dataset, checkpoint)."""
        if len(results) != len(rankings):
            raise ValueError(f"{len(results)} evaluation files but {len(rankings)} rankings files")
        groups: dict[tuple[str, str, str, str], list[tuple[dict[str, Any], pd.DataFrame, str, str]]] = {}
        for result_path, rankings_path in zip(results, rankings, strict=True):
            result = json.loads(Path(result_path).read_text())
            frame = pd.read_parquet(rankings_path)
            counts = frame["category"].value_counts().to_dict()
            expected = {c: r["queries"] for c, r in result["categories"].items() if r["queries"]}
            if counts != expected:
                raise ValueError(f"{rankings_path} does not hold the queries of {result_path} ({counts} vs {expected})")
            key = (result["stage"], result["variant"], result["dataset"], checkpoint_of(result))
            groups.setdefault(key, []).append((result, frame, str(result_path), str(rankings_path)))
        items = []
        for key, found in groups.items():
            found.sort(key=lambda x: seed_of(x[0]))
            for (a, *_, path_a, _r), (b, *_, path_b, _s) in zip(found, found[1:], strict=False):
                if seed_of(a) == seed_of(b):
                    raise ValueError(f"{path_a} and {path_b} are both seed {seed_of(a)} of the {_describe(key)}")
            frames = align_seeds([f for _, f, _, _ in found], [r for *_, r in found])
            intervals = confidence_intervals(frames, bootstrap.samples, bootstrap.seed, bootstrap.level)
            items.append(
                Evaluation(tuple(r for r, *_ in found), tuple(frames), intervals, tuple(p for _, _, p, _ in found))
            )
        return cls(items, bootstrap)

    @staticmethod
    def _key(key: tuple[str, ...]) -> tuple[str, str, str, str]:
        if len(key) == 3:
            return (*key, LAST)
        if len(key) != 4 or key[3] not in CHECKPOINTS:
            raise KeyError(f"{key}: (stage, variant, dataset) or (stage, variant, dataset, 'last' or 'best')")
        return tuple(key)

    def __getitem__(self, key: tuple[str, ...]) -> Evaluation:
        full = self._key(key)
        if full not in self.items:
            raise MissingEvaluation(f"no {_describe(full)} among the files given")
        return self.items[full]

    def get(self, key: tuple[str, ...]) -> Evaluation | None:
        return self.items.get(self._key(key))

    def best(self, stage: str, variant: str, dataset: str = "fashioniq") -> Evaluation | None:
        """The best-on-val evaluation, None when none was given (a run from before validation curves)."""
        return self.get((stage, variant, dataset, BEST))

    def seed_sets(self) -> dict[tuple[int, ...], list[tuple[str, str]]]:
        """Each set of seeds the evaluations have, with the models (stage, variant) trained with it."""
        out: dict[tuple[int, ...], list[tuple[str, str]]] = {}
        for (stage, variant, *_), e in self.items.items():
            models = out.setdefault(e.seeds, [])
            if (stage, variant) not in models:
                models.append((stage, variant))
        return out

    def seed_counts(self) -> set[int]:
        return {len(seeds) for seeds in self.seed_sets()} or {1}

    def seeds_text(self) -> str:
        """The seeds, for the notes: "2 seeds (seeds 0, 1)", "one seed (seed 0)", or each set with its models."""
        sets = self.seed_sets()
        if len(sets) <= 1:
            seeds = next(iter(sets), (0,))
            return (
                f"{'one' if len(seeds) == 1 else len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({_seeds_text(seeds)})"
            )
        each = [
            f"{_seeds_text(seeds)}: " + ", ".join(f"{v} ({s})" for s, v in models) for seeds, models in sets.items()
        ]
        return "each model's own seeds (" + "; ".join(each) + ")"

    def difference(self, a: tuple[str, ...], b: tuple[str, ...], metric: str = "Avg") -> Difference:
        """``metric(a) - metric(b)``, paired over the queries both were evaluated on and over their
        seeds (the same on both sides)."""
        ea, eb = self[a], self[b]
        if ea.seeds != eb.seeds:
            raise ValueError(
                f"cannot compare the {_describe(ea.key)} ({_seeds_text(ea.seeds)}) with the {_describe(eb.key)} "
                f"({_seeds_text(eb.seeds)}): a paired comparison needs the same seeds on both sides"
            )
        bs = self.bootstrap
        return paired_difference(list(ea.seed_rankings), list(eb.seed_rankings), metric, bs.samples, bs.seed, bs.level)


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


BEST_ON_VAL = "best on val"
# Table 3's label of a best-on-val row, after the model's: it is chosen on the queries it reports.
BEST_ROW = f"{BEST_ON_VAL} (selected on the reported set)"


def best_column(column: str) -> str:
    """The best-on-val twin of a FashionIQ column: ``FIQ (best on val)``."""
    return f"{column} ({BEST_ON_VAL})"


def table3(evals: Evaluations, spec: dict[str, str], origin: str) -> pd.DataFrame:
    """Our rows (the last checkpoints), each followed by its best-on-val row where a best-on-val
    evaluation was given; the chance row; the paper's rows."""
    categories = list(CATEGORY_NAMES)
    zero = evals["stage1", spec["without_finetuning"], "fashioniq"]
    tuned = evals["stage2", spec["with_finetuning"], "fashioniq"]
    rows = [
        {
            "Setting": "-",
            "Model": "chance (random ranking)",
            "Rows from": origin,
            **_recall_columns(zero, categories, True),
        }
    ]
    for setting, stage, variant, last in (
        (WITHOUT_FT, "stage1", spec["without_finetuning"], zero),
        (WITH_FT, "stage2", spec["with_finetuning"], tuned),
    ):
        model = f"FashionBLIP-2 ({variant})"
        rows.append({"Setting": setting, "Model": model, "Rows from": origin, **_recall_columns(last, categories)})
        best = evals.best(stage, variant)
        if best is not None:
            rows.append(
                {
                    "Setting": setting,
                    "Model": f"{model} {BEST_ROW}",
                    "Rows from": origin,
                    **_recall_columns(best, categories),
                }
            )
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


NOT_AVAILABLE = float("nan")  # a best-on-val cell without its evaluation (shown as "–")


def _best_avg(evals: Evaluations, stage: str, variant: str) -> Interval | float:
    best = evals.best(stage, variant)
    return NOT_AVAILABLE if best is None else best.intervals["Avg"]


def _any_best(evals: Evaluations, models: Sequence[tuple[str, str]]) -> bool:
    return any(evals.best(stage, variant) is not None for stage, variant in models)


def table4_models(spec: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Table 4's models of ours, (stage, variant): every one fine-tuned."""
    return [("stage2", e[k]) for e in spec for k in ("without_facap", "with_facap")]


def table4(evals: Evaluations, spec: list[dict[str, str]], origin: str) -> pd.DataFrame:
    """Our rows (the last checkpoints), with ``FIQ (best on val)`` beside ``FIQ`` when any best-on-val
    evaluation was given (enhFIQ has none: the checkpoint is chosen on FashionIQ val); the paper's rows."""
    with_best = _any_best(evals, table4_models(spec))
    fiq_best = best_column("FIQ")
    columns = ["Model", "Pretrain on FACap", "Fine-tune on FIQ", "FIQ", *([fiq_best] if with_best else [])]
    columns += ["enhFIQ", "Rows from"]
    rows = []
    for entry in spec:
        for pretrained, variant in (("no", entry["without_facap"]), ("yes", entry["with_facap"])):
            rows.append(
                {
                    "Model": f"{entry['model']} ({variant})",
                    "Pretrain on FACap": pretrained,
                    "Fine-tune on FIQ": "yes",
                    "FIQ": evals["stage2", variant, "fashioniq"].intervals["Avg"],
                    fiq_best: _best_avg(evals, "stage2", variant),
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
                fiq_best: NOT_AVAILABLE,
                "enhFIQ": enh,
                "Rows from": REPORTED,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def table4_comparisons(evals: Evaluations, spec: list[dict[str, str]]) -> pd.DataFrame:
    """Per model, with FACap minus without, both fine-tuned."""
    pairs = [
        (f"{e['model']}: with FACap minus without", ("stage2", e["with_facap"]), ("stage2", e["without_facap"]))
        for e in spec
    ]
    return comparisons(evals, pairs)


TABLE5_SETTINGS = (("stage1", "no fine-tuning"), ("stage2", "w/ fine-tuning"))


def table5_models(variants: list[str]) -> list[tuple[str, str]]:
    """Table 5's models of ours, (stage, variant): each variant before and after fine-tuning."""
    return [(stage, v) for stage, _ in TABLE5_SETTINGS for v in variants]


def table5(evals: Evaluations, variants: list[str], specs: dict[str, dict[str, Any]], origin: str) -> pd.DataFrame:
    """Our rows (the last checkpoints), per setting with ``FIQ (best on val)`` beside ``FIQ`` when a
    best-on-val evaluation was given at that stage; the paper's rows."""
    best_stages = {stage for stage, _ in TABLE5_SETTINGS if _any_best(evals, [(stage, v) for v in variants])}
    columns = ["Variant", "Training tasks", "Adapter", "Matching"]
    for stage, setting in TABLE5_SETTINGS:
        columns += [f"{setting} FIQ", *([best_column(f"{setting} FIQ")] if stage in best_stages else [])]
        columns.append(f"{setting} enhFIQ")
    columns.append("Rows from")
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
            row[best_column(f"{setting} FIQ")] = _best_avg(evals, stage, name)
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
    return pd.DataFrame(rows, columns=columns)


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
P_FLOOR = "p at floor"  # the .csv's flag: no draw was as extreme (the p is the test's smallest)
# The Differences columns: the .csv adds the interval bounds. "p" is the raw p of the row's "Test".
COMPARISON_COLUMNS = [
    "Comparison",
    "Evaluation set",
    "Avg difference",
    "p",
    "p (Holm)",
    P_FLOOR,
    "Significant (95 %)",
    "Test",
]


def comparisons(
    evals: Evaluations,
    pairs: list[tuple[str, tuple[str, str], tuple[str, str]]],
    datasets: Sequence[str] = tuple(DATASETS),
) -> pd.DataFrame:
    """One row per (comparison, evaluation set), between the last checkpoints: the Avg difference
    (the mean over the seeds of each seed's difference) with its paired bootstrap interval
    (unadjusted), the p-value of the row's test ("Test": the permutation test over queries with one
    seed, the bootstrap over seeds and queries with several), its Holm-adjusted p over all the rows
    returned (the family: one table's Differences section, both evaluation sets), whether the raw p
    is at its test's floor, and "Significant (95 %)": the Holm p is below ``ALPHA``.

    The p columns hold :class:`PValue` numbers: the .csv gets the numbers, the Markdown prints one
    known only to be below a bound as ``< bound``."""
    found = []
    for label, (stage_a, a), (stage_b, b) in pairs:
        for dataset in datasets:
            found.append((label, dataset, evals.difference((stage_a, a, dataset), (stage_b, b, dataset))))
    raw, adjusted = holm_with_bounds([d.p_value for *_, d in found], [d.floor for *_, d in found])
    rows = [
        {
            "Comparison": label,
            "Evaluation set": DATASETS[dataset],
            "Avg difference": d.interval,
            "p": p,
            "p (Holm)": holm_p,
            P_FLOOR: "yes" if d.p_at_floor else "no",
            "Significant (95 %)": "yes" if holm_p < ALPHA else "no",
            "Test": d.test,
        }
        for (label, dataset, d), p, holm_p in zip(found, raw, adjusted, strict=True)
    ]
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for column in ("p", "p (Holm)"):
        # Object columns: pandas would otherwise turn the PValues into plain floats and lose the bound.
        frame[column] = pd.Series([r[column] for r in rows], index=frame.index, dtype=object)
    return frame


def interval_note(bootstrap: Bootstrap, seed_counts: Collection[int] = (1,)) -> str:
    """How our cells' intervals are drawn; ``seed_counts``: how many seeds the table's models have."""
    level = f"{bootstrap.level:.0%}"
    if set(seed_counts) == {1}:
        return (
            f"Our cells: value ± half the width of its {level} bootstrap interval over queries ({bootstrap.samples} "
            f"draws, bootstrap seed {bootstrap.seed}, queries resampled within each category); the .csv has the bounds."
        )
    note = (
        f"Our cells: the mean over the seeds ± half the width of its {level} two-way bootstrap interval over seeds "
        f"and queries ({bootstrap.samples} draws, bootstrap seed {bootstrap.seed}): each draw resamples the queries "
        "within each category (the same draw for every seed and every model) and, independently, the seeds with "
        "replacement (the same for every model), and takes the mean over the drawn seeds; the .csv has the bounds."
    )
    if 2 in seed_counts:
        note += (
            " With 2 seeds the seed part of the draw is coarse: it has only 3 distinct multisets ({s1, s1}, "
            "{s1, s2}, {s2, s2}), so the interval's share of the variation between runs is a rough one."
        )
    if 1 in seed_counts:
        note += " A model with one seed gets the interval over queries alone."
    return note


def _tests_of(differences: pd.DataFrame | int) -> set[str]:
    if isinstance(differences, int) or "Test" not in differences:
        return {PERMUTATION_TEST}
    return set(differences["Test"]) or {PERMUTATION_TEST}


def differences_note(
    bootstrap: Bootstrap,
    differences: pd.DataFrame | int,
    seeds: str = "one seed (seed 0)",
    seed_counts: Collection[int] | None = None,
) -> str:
    """What the Differences section shows (``differences``: the section, or its number of rows),
    which test gave its p-values, over how many seeds (``seeds``: :meth:`Evaluations.seeds_text`;
    ``seed_counts``: :meth:`Evaluations.seed_counts`), and what "Significant (95 %)" means there."""
    draws, level = bootstrap.samples, f"{bootstrap.level:.0%}"
    rows = differences if isinstance(differences, int) else len(differences)
    tests = _tests_of(differences)
    parts = [
        "Differences (section below): each row's Avg difference as its label reads, between the last checkpoints, "
        f"on the same queries, over {seeds}."
    ]
    if PERMUTATION_TEST in tests:
        parts.append(
            f"{'Rows of models with one seed' if len(tests) > 1 else 'It comes'} with its paired {level} bootstrap "
            "interval over queries (unadjusted: each interval holds for its own row) and the p-value of a two-sided "
            f"paired permutation test of Avg (Test: '{PERMUTATION_TEST}'; {draws} sign-flip draws, seed "
            f"{bootstrap.seed}); with {draws} draws the smallest p it gives is 1/{draws + 1}: a p shown as "
            f"'< {1 / draws:.2g}' had no draw as extreme."
        )
    if BOOTSTRAP_TEST in tests:
        parts.append(
            f"{'Rows of models with several seeds are' if len(tests) > 1 else 'It is'} paired by seed and by query: "
            f"per seed, the two models' Avg difference on the same queries, averaged over the seeds, with its "
            f"{level} two-way bootstrap interval ({draws} draws, bootstrap seed {bootstrap.seed}: each resamples the "
            "queries within each category and the seeds with replacement, both the same for the two models; "
            "unadjusted: each interval holds for its own row). Its p-value (Test: "
            f"'{BOOTSTRAP_TEST}') is the two-sided bootstrap p of those same replicates d*, "
            f"min(1, 2 min(1 + #{{d* <= 0}}, 1 + #{{d* >= 0}}) / ({draws} + 1)), not a permutation test over queries, "
            "which would call one seed's luck significant. Its smallest p is "
            f"2/{draws + 1}: a p shown as '< {2 / draws:.2g}' had every draw on one side of 0."
        )
        if 2 in (seed_counts or ()):
            parts.append(
                "With 2 seeds the seed part of the draw has only 3 distinct multisets, one of them the one seed twice "
                "(a quarter of the draws): a difference whose sign one of the two seeds does not share cannot be "
                "significant (its p is about 0.25 or more)."
            )
    parts.append(
        f"Each p is adjusted by Holm's step-down over the section's {rows} rows (both evaluation sets). "
        f"'Significant (95 %)' is Holm p < {ALPHA:g}: it holds for the section's comparisons together, and an "
        f"interval that excludes 0 is not enough for it. A p at its test's floor is only known to be below the "
        f"bound it prints as (the .csv keeps the number and says so in '{P_FLOOR}'), and a Holm p shown as '< x' "
        "is bounded by such p-values."
    )
    floor = max(bootstrap_floor(draws) if t == BOOTSTRAP_TEST else permutation_floor(draws) for t in tests)
    if rows * floor >= ALPHA:
        parts.append(
            f"With {draws} draws and {rows} rows no row can be significant: even a p at the test's floor "
            f"({floor:.2g}) gets a Holm p of {rows} x {floor:.2g} >= {ALPHA:g}; more draws "
            "(evaluation.bootstrap.samples) lower the floor."
        )
    return " ".join(parts)


LAST_AND_BEST_NOTE = (
    "Last: the model after the last step (the default). Best on val: the validation point with the highest Avg "
    "on FashionIQ val, as SPRC reports with --save-best; it is selected on the set it is reported on, so it is "
    "optimistic."
)
ENHFIQ_NO_BEST_NOTE = (
    "enhFIQ has no best-on-val column: the checkpoint is chosen on FashionIQ val only (as SPRC, which reports "
    "FashionIQ only), so there is no best-on-val evaluation of enhFashionIQ."
)
DIFFERENCES_ON_LAST_NOTE = (
    "The differences compare the last checkpoints only: a best-on-val model is chosen on the very queries it "
    "would be tested on, so a test between best-on-val numbers would not hold its level."
)
NO_BEST_NOTE = (
    "Best on val: not available (no best-on-val evaluation was given, e.g. a run from before training kept a "
    "validation curve): every number of ours is the model after the last step."
)


def seeds_note(evals: Evaluations) -> str:
    """How many training runs each cell of ours stands for."""
    sets = evals.seed_sets()
    if len(sets) == 1:
        (seeds,) = sets
        if len(seeds) == 1:
            return f"Each cell of ours is one training run's (seed {seeds[0]}), not a mean over seeds."
        return f"Each cell of ours is the mean over {len(seeds)} seeds ({_seeds_text(seeds)})."
    return f"Each cell of ours is the mean over its model's seeds, not the same for every model: {evals.seeds_text()}."


def _steps_text(best: Evaluation) -> str:
    return ", ".join(
        f"{'not recorded' if step is None else step} (seed {seed})"
        for seed, step in zip(best.seeds, best.steps, strict=True)
    )


def checkpoint_notes(evals: Evaluations, models: Sequence[tuple[str, str]], enhfashioniq: bool = True) -> list[str]:
    """Tables 3-5's notes on last and best-on-val numbers: what each is, the steps chosen per seed,
    the models without a best-on-val evaluation, and that the differences are the last checkpoints'.
    ``models``: the table's (stage, variant) of ours; ``enhfashioniq``: the table has enhFIQ columns."""
    found = {m: evals.best(*m) for m in dict.fromkeys(models)}
    if not any(found.values()):
        return [NO_BEST_NOTE]
    notes = [LAST_AND_BEST_NOTE, *([ENHFIQ_NO_BEST_NOTE] if enhfashioniq else [])]
    chosen = "; ".join(f"{v} ({s}): step {_steps_text(b)}" for (s, v), b in found.items() if b is not None)
    notes.append(f"Best on val, the step chosen: {chosen}.")
    missing = [f"{v} ({s})" for (s, v), b in found.items() if b is None]
    if missing:
        notes.append(
            f"No best-on-val evaluation was given for {', '.join(missing)}: its best-on-val numbers are not available."
        )
    notes.append(DIFFERENCES_ON_LAST_NOTE)
    return notes


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
