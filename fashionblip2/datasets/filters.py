"""FACap's filters (``facap.filters``: a threshold per triplet score): a triplet stays when each of
its filtered scores is at least the threshold. The filtered FACap has the released layout, and a
report says what each filter removes, by source and category."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from fashionblip2.datasets.assembly import read_released, write_facap
from fashionblip2.datasets.scores import score_card, score_columns


def failing(triplets: pd.DataFrame, filters: dict[str, float]) -> pd.DataFrame:
    """One boolean column per filter: the triplets that score below its threshold."""
    unknown = [name for name in filters if name not in triplets.columns]
    if unknown:
        raise ValueError(f"facap.filters names scores FACap does not have: {', '.join(unknown)}")
    return pd.DataFrame({name: triplets[name] < threshold for name, threshold in filters.items()}, index=triplets.index)


def filter_counts(triplets: pd.DataFrame, filters: dict[str, float]) -> pd.DataFrame:
    """Per (source, category) and in total: triplets before, those each filter fails (a triplet can
    fail several), those removed (failing any) and after."""
    fails = failing(triplets, filters)
    frame = pd.concat([triplets[["source", "category"]], fails], axis=1)
    frame["removed"] = fails.any(axis=1) if len(filters) else False
    groups = frame.groupby(["source", "category"], sort=True)
    table = groups.size().rename("before").to_frame()
    for name in [*filters, "removed"]:
        table[f"fails {name}" if name != "removed" else "removed"] = groups[name].sum().astype(int)
    table = table.reset_index()
    total = {"source": "all", "category": "all", **table.drop(columns=["source", "category"]).sum().to_dict()}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    table["after"] = table["before"] - table["removed"]
    table["removed %"] = (100 * table["removed"] / table["before"].where(table["before"] > 0)).round(1)
    return table


def filter_facap(
    facap_dir: str | os.PathLike[str], filters: dict[str, float], out_dir: str | os.PathLike[str]
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Write the filtered FACap; returns (its data card, the counts table)."""
    triplets, card = read_released(facap_dir)
    counts = filter_counts(triplets, filters)
    kept = triplets[~failing(triplets, filters).any(axis=1)] if filters else triplets
    columns = score_columns(triplets)
    card = {
        **{k: v for k, v in card.items() if k not in ("categories", "triplets")},
        "filtered_from": {"triplets": int(len(triplets)), "folder": os.fspath(facap_dir)},
        "filters": {name: {"keep_at_least": threshold} for name, threshold in filters.items()},
        "triplets_removed_by_filters": int(len(triplets) - len(kept)),
        "scores": score_card(kept, columns),
    }
    return write_facap(kept, columns, card, out_dir), counts


def filter_report(counts: pd.DataFrame, filters: dict[str, float], provenance_line: str) -> str:
    """The filter report (Markdown): thresholds, then what each filter removes by source and category."""
    total = counts[counts["source"] == "all"].iloc[0]
    lines = [
        "# FACap filters",
        "",
        provenance_line,
        "",
        "A triplet stays when each filtered score is at least its threshold (facap.filters); "
        "the scores are defined in FACap's data_card.json.",
        "",
        "| Score | Keep when at least |",
        "|---|---|",
        *[f"| {name} | {threshold:g} |" for name, threshold in filters.items()],
        "",
        f"**{int(total['removed'])} of {int(total['before'])} triplets removed ({total['removed %']:.1f} %), "
        f"{int(total['after'])} kept.** A triplet can fail several filters, so the per-filter counts can add "
        "up to more than the removed ones.",
        "",
        counts.to_markdown(index=False),
        "",
    ]
    return "\n".join(lines)
