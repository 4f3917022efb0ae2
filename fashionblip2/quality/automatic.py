"""An automatic annotator for the synthetic world: scores Table 2's criteria from the ground truth.

The synthetic world knows every image's true attributes, so a modification text can be checked:
it is read into claims with the project's fashion lexicon ("is red", "has short sleeves", and the
relative "longer sleeves", "is darker", "is looser"), and each claim is true or false of an image.

- faithfulness: 1 + 4 x the share of the text's claims that are true of the target (a text that
  claims nothing checkable, "looks nicer", is vacuously faithful: 5);
- details: 1 + the number of true claims that are real differences from the reference (at most 5);
- saliency: from the share of the gallery (same source and garment) that satisfies every claim:
  at most 2 % -> 5, 5 % -> 4, 15 % -> 3, 40 % -> 2, more (or no claim) -> 1.

Several automatic annotators differ only by seeded noise (each score moves by one step with a set
probability), so that the agreement statistics have something to measure. They are labelled as
automatic in Table 2; they are a check of the pipeline, not a substitute for human judgement.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from fashionblip2.annotation.lexicon import find_attributes
from fashionblip2.common.colours import NAMED_COLOURS
from fashionblip2.quality.table2 import CRITERIA
from fashionblip2.synthetic.attributes import FITS, LENGTHS, SLEEVES

ATTRIBUTES = ("colour", "colour2", "pattern", "sleeve", "length", "neckline", "fit", "fabric", "garment")
CLAUSES = re.compile(r",|;|\.|\band\b|\bbut\b|\bwith\b")
SALIENCY_BINS = [(0.02, 5), (0.05, 4), (0.15, 3), (0.40, 2)]
# Relative words -> (attribute, direction): the target has more / less of it than the reference.
RELATIVE = [
    (re.compile(r"\blonger sleeves?\b"), ("sleeve", +1)),
    (re.compile(r"\bshorter sleeves?\b"), ("sleeve", -1)),
    (re.compile(r"\blonger\b"), ("length", +1)),
    (re.compile(r"\bshorter\b"), ("length", -1)),
    (re.compile(r"\b(tighter|more fitted|less baggy)\b"), ("fit", -1)),
    (re.compile(r"\b(looser|more flowy|baggier)\b"), ("fit", +1)),
    (re.compile(r"\bdarker\b"), ("brightness", -1)),
    (re.compile(r"\blighter\b"), ("brightness", +1)),
]


@dataclass(frozen=True)
class Claim:
    attribute: str
    value: str | None = None  # an absolute claim: the image has this value
    direction: int = 0  # a relative claim: more (+1) or less (-1) than the reference


def read_claims(text: str) -> list[Claim]:
    claims: list[Claim] = []
    for clause in CLAUSES.split(text.lower()):
        relative = None
        for pattern, (attribute, direction) in RELATIVE:
            if pattern.search(clause):
                relative = Claim(attribute, direction=direction)
                break
        found = find_attributes(clause)
        found.pop("garment", None)
        if relative is not None:
            found.pop(relative.attribute, None)
            claims.append(relative)
        claims += [Claim(attribute, value) for attribute, value in found.items()]
    return list(dict.fromkeys(claims))


def _rank(attribute: str, image: dict) -> float | None:
    value = image.get(attribute)
    if attribute == "brightness":
        colour = NAMED_COLOURS.get(image.get("colour") or "")
        return float(sum(colour)) if colour else None
    order = {"sleeve": SLEEVES, "fit": FITS, "length": LENGTHS.get(image.get("garment") or "", ())}[attribute]
    return float(order.index(value)) if value in order else None


def holds(claim: Claim, image: dict, reference: dict) -> bool:
    if claim.value is not None:
        if claim.attribute == "colour":
            return claim.value in (image.get("colour"), image.get("colour2"))
        return image.get(claim.attribute) == claim.value
    a, b = _rank(claim.attribute, image), _rank(claim.attribute, reference)
    return a is not None and b is not None and (a - b) * claim.direction > 0


def is_difference(claim: Claim, reference: dict) -> bool:
    """A true absolute claim names a difference when the reference lacks the value."""
    return claim.value is None or not holds(claim, reference, reference)


def score_triplet(text: str, reference: dict, target: dict, gallery: Sequence[dict]) -> dict[str, int]:
    claims = read_claims(text)
    true = [c for c in claims if holds(c, target, reference)]
    faithfulness = 5 if not claims else 1 + round(4 * len(true) / len(claims))
    details = min(5, 1 + len({c.attribute for c in true if is_difference(c, reference)}))
    saliency = 1
    if claims and gallery:
        share = sum(all(holds(c, g, reference) for c in claims) for g in gallery) / len(gallery)
        saliency = next((score for limit, score in SALIENCY_BINS if share <= limit), 1)
    return {"faithfulness": faithfulness, "details": details, "saliency": saliency}


def truth_by_image(truth: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, dict]:
    """Manifest image id -> true attributes (ids are <source>:...:<native id>)."""
    attrs = {(r["source"], r["native_id"]): r for r in truth[["source", "native_id", *ATTRIBUTES]].to_dict("records")}
    out = {}
    for image_id, source in zip(manifest["image_id"], manifest["source"], strict=True):
        row = attrs.get((source, image_id.split(":")[-1]))
        if row is not None:
            out[image_id] = {k: row[k] for k in ATTRIBUTES}
    return out


def automatic_scores(items: pd.DataFrame, truth: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The noise-free scores of every sampled item (item_id + the three criteria)."""
    images = truth_by_image(truth, manifest)
    source_of = dict(zip(manifest["image_id"], manifest["source"], strict=True))
    galleries: dict[tuple[str, str], list[dict]] = {}
    for image_id, attrs in images.items():
        galleries.setdefault((source_of[image_id], attrs["garment"]), []).append(attrs)
    rows = []
    for item in items.itertuples():
        reference, target = images.get(item.reference_id), images.get(item.target_id)
        if reference is None or target is None:
            missing = item.reference_id if reference is None else item.target_id
            raise KeyError(f"item {item.item_id}: {missing} has no ground truth (is this the synthetic world?)")
        gallery = galleries[(source_of[item.target_id], target["garment"])]
        rows.append({"item_id": item.item_id, **score_triplet(item.text, reference, target, gallery)})
    return pd.DataFrame(rows, columns=["item_id", *CRITERIA])


def noisy_annotator(scores: pd.DataFrame, name: str, noise: float, seed: int) -> pd.DataFrame:
    """One automatic annotator: each score moves one step up or down with probability ``noise``."""
    rng = random.Random(f"{seed}:{name}")
    out = scores.copy()
    for criterion in CRITERIA:
        out[criterion] = [
            min(5, max(1, s + rng.choice((-1, 1)))) if rng.random() < noise else s for s in out[criterion]
        ]
    out["annotator"] = name
    return out
