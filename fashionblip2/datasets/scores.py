"""The triplet scores as the released datasets carry them: their names, what the data cards say
each one is, and a card entry with its distribution. The scores themselves are computed in
:mod:`fashionblip2.quality.triplet_scores`."""

from __future__ import annotations

import pandas as pd

SCORES = ("caption_faithfulness", "grounding", "discriminative", "form")
# What the data cards say each score is (the module docstring has the details).
DEFINITIONS = {
    "caption_faithfulness": "worse image's worst caption sentence: its image-text similarity as a z-score "
    "against the same sentence's similarity to other images of the category (higher: more faithful)",
    "grounding": "0 if a claim of the text contradicts the captions or catalogue attributes (or points the "
    "wrong way); else the share of its claims the target has and the reference lacks",
    "discriminative": "1 - (rank - 1) / (shortlist - 1) of the target among its reference's pairing shortlist "
    "for the zero-shot composed query (reference image + text)",
    "form": "1, or 0 for an empty, too short or too long text, a refusal, a repeated text, a copy of a caption, "
    "identical captions or a text not in English",
}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def score_columns(scores: pd.DataFrame) -> list[str]:
    """The score columns a score table has, in the canonical order."""
    return [c for c in SCORES if c in scores.columns]


def score_card(triplets: pd.DataFrame, columns: list[str]) -> dict[str, dict]:
    """A data card's entry per score: its definition and its distribution over the dataset."""
    card = {}
    for c in columns:
        values = triplets[c].astype(float)
        card[c] = {
            "definition": DEFINITIONS[c],
            "mean": round(float(values.mean()), 4) if len(values) else None,
            "quantiles": {f"{q:g}": round(float(values.quantile(q)), 4) for q in QUANTILES} if len(values) else {},
        }
    return card
