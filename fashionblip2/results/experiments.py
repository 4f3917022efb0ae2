"""The paper's experiment outputs, each written whole: Tables 3-5 (table, comparisons, notes) and
Figures 5 and 6, from the evaluations the workflow passes in (every seed's, last and best on val);
and Table 6, beyond the paper (filtered against unfiltered FACap), written the same way. Every
number of ours is the mean over the seeds; Figure 6 shows the first seed's model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fashionblip2.common.io import write_text_atomic
from fashionblip2.common.provenance import provenance
from fashionblip2.config import unfiltered_variant
from fashionblip2.results import tables as et
from fashionblip2.results.figures import contact_sheet, qualitative_row, recall_curve
from fashionblip2.results.writing import TableFiles, as_numbers, write_table
from fashionblip2.sources.manifest import manifest_paths

REPORTED_NOTE = (
    "Rows marked 'reported by the paper' are copied from the paper (ViT-G BLIP-2, real FashionIQ), not recomputed."
)


@dataclass(frozen=True)
class Origin:
    """Where our rows come from, for every note: the data kind and the config run."""

    data: str
    run_name: str

    @property
    def rows(self) -> str:
        return f"this run ({self.data} data)"

    @property
    def scale(self) -> str:
        if self.data == "synthetic":
            return (
                "Our rows come from the embedded default's tiny models on the synthetic world: compare them with "
                "each other (see the differences below) and with the chance level, not with the paper's numbers."
            )
        return "Our rows: this run's models on real data."

    def footer(self) -> str:
        p = provenance(self.data, self.run_name)
        return f"Data: {p['data']}; config run: {p['run_name']}; commit: {p['commit']}."


DIFFERENCES = "Differences: paired, on the same queries"


def _write_experiment_table(
    evals: et.Evaluations,
    origin: Origin,
    files: TableFiles,
    title: str,
    table: pd.DataFrame,
    differences: pd.DataFrame,
    about: list[str],
    chance_of: tuple[str, str],
    extra: list[str] | None = None,
    reported_note: str | None = REPORTED_NOTE,
) -> None:
    """Tables 3-6 alike: what the table shows, how sure its numbers are, the chance level of our
    galleries, where our rows and the paper's come from; the paired differences as a section, their
    p-values Holm-adjusted over that section (the .csv keeps the numbers; the Markdown prints a p at
    its test's floor as ``< bound``).
    ``reported_note``: None for a table without reported rows (Table 6), which must not claim any."""
    notes = [
        *about,
        et.seeds_note(evals),
        et.interval_note(evals.bootstrap, evals.seed_counts()),
        et.differences_note(evals.bootstrap, differences, evals.seeds_text(), evals.seed_counts()),
        et.chance_note(evals, *chance_of),
        origin.scale,
        *([reported_note] if reported_note else []),
        *(extra or []),
        origin.footer(),
    ]
    write_table(table, files, title, notes, sections={DIFFERENCES: differences})


def write_table3(evals: et.Evaluations, spec: dict[str, str], origin: Origin, files: TableFiles) -> None:
    about = [
        "Recall@K in percent on FashionIQ val (two captions joined, reference not removed from the ranking); "
        "Avg = (mean R@10 + mean R@50) / 2.",
        f"Without fine-tuning: trained on FACap only ({spec['without_finetuning']}); with fine-tuning: "
        f"FACap then FashionIQ train ({spec['with_finetuning']}), as the paper's rows (Table 5).",
    ]
    models = [("stage1", spec["without_finetuning"]), ("stage2", spec["with_finetuning"])]
    about += et.checkpoint_notes(evals, models, enhfashioniq=False)
    _write_experiment_table(
        evals,
        origin,
        files,
        "Table 3: FashionIQ validation, without and with fine-tuning",
        et.table3(evals, spec, origin.rows),
        et.table3_comparisons(evals, spec),
        about,
        ("stage1", spec["without_finetuning"]),
        et.table3_inconsistency_notes(),
    )


def write_table4(evals: et.Evaluations, spec: list[dict[str, str]], origin: Origin, files: TableFiles) -> None:
    about = [
        "Avg = (mean R@10 + mean R@50) / 2 over dress, shirt and toptee, on FashionIQ val and enhFashionIQ.",
        "Without FACap: fine-tuned on FashionIQ straight from the pretrained backbone. The SPRC-style row is our "
        "global-matching variant of FashionBLIP-2 (no adapters, one global embedding), not SPRC's code.",
    ]
    _write_experiment_table(
        evals,
        origin,
        files,
        "Table 4: impact of FACap pretraining",
        et.table4(evals, spec, origin.rows),
        et.table4_comparisons(evals, spec),
        [*about, *et.checkpoint_notes(evals, et.table4_models(spec))],
        ("stage2", spec[0]["with_facap"]),
    )


def write_table5(
    evals: et.Evaluations,
    names: list[str],
    variants: dict[str, dict[str, Any]],
    origin: Origin,
    files: TableFiles,
) -> None:
    about = [
        "Avg recall ((mean R@10 + mean R@50) / 2) on FashionIQ val and enhFashionIQ, after FACap only "
        "(no fine-tuning) and after fine-tuning on FashionIQ. MH: multi-head matching.",
    ]
    _write_experiment_table(
        evals,
        origin,
        files,
        "Table 5: ablation of FashionBLIP-2's components",
        et.table5(evals, names, variants, origin.rows),
        et.table5_comparisons(evals, names),
        [*about, *et.checkpoint_notes(evals, et.table5_models(names))],
        ("stage1", names[0]),
    )


def write_table6(evals: et.Evaluations, spec: dict[str, list[str]], origin: Origin, files: TableFiles) -> None:
    """``spec``: config ``experiments.table6``, ``{"variants": [...]}``; each variant is compared with
    its ``<variant>_unfiltered`` twin, which the workflow trains with the same settings."""
    if not spec.get("variants"):
        raise ValueError("experiments.table6 lists no variants: Table 6 has nothing to compare")
    twins = ", ".join(unfiltered_variant(v) for v in spec["variants"])
    about = [
        "Beyond the paper (it has no Table 6, so there are no reported rows): does filtering FACap help? "
        "Avg recall ((mean R@10 + mean R@50) / 2) on FashionIQ val and enhFashionIQ.",
        "Filtered: stage 1 trained on FACap after facap.filters (the filters and what they removed: "
        "results/scores/filters.md); unfiltered: the same variant's settings, stage 1 trained on FACap without "
        f"those filters ({twins}). No fine-tuning: after stage 1 only; w/ fine-tuning: after the same FashionIQ "
        "fine-tuning (stage 2) for both.",
    ]
    _write_experiment_table(
        evals,
        origin,
        files,
        "Table 6 (beyond the paper): FashionBLIP-2 trained on filtered and unfiltered FACap",
        et.table6(evals, spec, origin.rows),
        et.table6_comparisons(evals, spec),
        about,
        ("stage1", spec["variants"][0]),
        reported_note=None,
    )


def write_figure5(
    evals: et.Evaluations,
    names: list[tuple[float, str]],
    epochs_note: str,
    origin: Origin,
    png: str | os.PathLike[str],
    csv: str | os.PathLike[str],
    differences: str | os.PathLike[str],
) -> None:
    """The curve (with its 95 % band), its numbers with their bounds (``csv``) and the paired
    differences between consecutive fractions (``differences``, Holm-adjusted over its rows, as a
    table's Differences section)."""
    series, frame = et.fraction_series(evals, names)
    write_text_atomic(differences, as_numbers(et.figure5_comparisons(evals, names)).to_csv(index=False))
    write_text_atomic(csv, as_numbers(frame).to_csv(index=False))
    over = "queries" if evals.seed_counts() == {1} else f"seeds and queries, around the mean over {evals.seeds_text()}"
    caption = f"{epochs_note} Bands: {evals.bootstrap.level:.0%} bootstrap intervals over {over}. {origin.footer()}"
    recall_curve(
        [f for f, _ in names],
        series,
        png,
        "Figure 5: recall without fine-tuning against the FACap training fraction",
        caption,
    )


def write_figure6(
    evals: et.Evaluations, spec: dict[str, Any], manifest: pd.DataFrame, origin: Origin, png: str | os.PathLike[str]
) -> None:
    paths = manifest_paths(manifest)
    rows = []
    seeds = set()
    for dataset, which in (("fashioniq", "best"), ("enhfashioniq", "best"), ("fashioniq", "worst")):
        found = evals[spec["stage"], spec["variant"], dataset]  # the last checkpoint
        seeds.add(found.seeds[0])
        row = qualitative_row(found.rankings, dataset, which, paths, int(spec["top_k"]))  # its first seed's
        if row is not None:
            rows.append(row)
    model = f"{spec['variant']} ({spec['stage']}, {', '.join(f'seed {s}' for s in sorted(seeds))})"
    contact_sheet(rows, png, title=f"Figure 6: {model}. {origin.footer()}")
