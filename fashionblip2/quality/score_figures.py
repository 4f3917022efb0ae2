"""The triplet scores as people look at them in the report: each score's distribution per dataset
(with its flag threshold), and a sample of flagged triplets with their images."""

from __future__ import annotations

import os

import pandas as pd

from fashionblip2.common.io import atomic_path
from fashionblip2.datasets.scores import score_columns
from fashionblip2.results.figures import SheetRow, contact_sheet


def distributions_figure(scores: pd.DataFrame, thresholds: dict[str, float], out: str | os.PathLike[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = score_columns(scores)
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2), squeeze=False)
    for ax, name in zip(axes[0], columns, strict=True):
        for dataset, group in scores.groupby("dataset", sort=True):
            ax.hist(group[name].astype(float), bins=20, alpha=0.55, label=f"{dataset} ({len(group)})", density=True)
        ax.axvline(thresholds[name], color="black", linestyle="--", linewidth=1, label="flag threshold")
        ax.set_title(name)
        ax.set_xlabel("score (higher is better)")
    axes[0][0].set_ylabel("density")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def flagged_sheet(sample: pd.DataFrame, paths: dict[str, str], out: str | os.PathLike[str]) -> None:
    """Reference | text | target, and which scores flag it (with their values)."""
    rows = [
        SheetRow(
            reference=paths[r.reference_id],
            text=r.text,
            retrieved=[paths[r.target_id]],
            labels=["target"],
            note="; ".join(f"{name} {getattr(r, name):.2f}" for name in r.flagged_by.split(", ")),
        )
        for r in sample.itertuples()
    ]
    contact_sheet(rows, out, title=f"{len(rows)} flagged triplets (seeded sample)")
