"""Wrong modification texts planted on purpose by the offline differ, so the triplet scores have
errors to find (issue 22): the embedded default's texts are otherwise as right as its captions.

Three kinds, each at its own rate, the kind of a pair drawn from a hash of (seed, both captions):

- ``hallucination``: a difference named with a value the target does not have ("is green" of a red
  target);
- ``wrong_direction``: the text describes the change backwards, from target to reference ("is
  shorter" where the target is longer, the reference's colour as the new one);
- ``target_only``: a description of the target alone (its caption's first sentence), which says
  nothing about what changes.

The kind is a pure function of the request, so an evaluation re-derives exactly which pairs were
planted (:func:`planted_kind`) from the captions in the released files: the record is the seed and
the rates in config, not a side file that could drift from the texts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

KINDS = ("hallucination", "wrong_direction", "target_only")


@dataclass(frozen=True)
class PlantedErrors:
    """Rates (each in [0, 1], their sum at most 1) and the seed of the draw."""

    hallucination: float
    wrong_direction: float
    target_only: float
    seed: int

    def __post_init__(self) -> None:
        rates = [getattr(self, k) for k in KINDS]
        if any(r < 0 for r in rates) or sum(rates) > 1:
            given = dict(zip(KINDS, rates, strict=True))
            raise ValueError(f"planted error rates must be >= 0 and sum to at most 1, got {given}")

    @property
    def active(self) -> bool:
        return any(getattr(self, k) > 0 for k in KINDS)

    @property
    def tag(self) -> str:
        """What enters the differ's model name (hence the cache key): another rate, another answer."""
        return "planted:" + "/".join(f"{getattr(self, k):g}" for k in KINDS) + f"/seed{self.seed}"


def _unit(seed: int, reference_caption: str, target_caption: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{reference_caption}\x00{target_caption}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def planted_kind(planted: PlantedErrors | None, reference_caption: str, target_caption: str) -> str:
    """The kind of error drawn for this pair of captions ("" for none). Whether the differ could apply
    it (a pair with nothing to reverse stays right) is :func:`applied_kind`'s business."""
    if planted is None or not planted.active:
        return ""
    u, edge = _unit(planted.seed, reference_caption, target_caption), 0.0
    for kind in KINDS:
        edge += getattr(planted, kind)
        if u < edge:
            return kind
    return ""


def value_draw(planted: PlantedErrors, reference_caption: str, target_caption: str, n: int) -> int:
    """A second seeded draw (which wrong value a hallucination takes), independent of the kind's."""
    return int(_unit(planted.seed + 1, reference_caption, target_caption) * n)
