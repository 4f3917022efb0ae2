"""Garment attributes of the synthetic world, and how items are drawn from them."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from fashionblip2.common.colours import NAMED_COLOURS

GARMENTS = ("dress", "skirt", "pants", "jacket", "top", "shirt", "toptee")

COLOURS = NAMED_COLOURS

PATTERNS = ("solid", "stripes", "dots", "plaid", "floral", "colour block")
FABRICS = ("cotton", "denim", "leather", "knitted", "chiffon", "furry")
FITS = ("slim", "regular", "loose")

SLEEVES = ("sleeveless", "short", "elbow", "long")
LENGTHS: dict[str, tuple[str, ...]] = {
    "dress": ("mini", "knee", "midi", "maxi"),
    "skirt": ("mini", "knee", "midi", "maxi"),
    "pants": ("shorts", "cropped", "full"),
    "jacket": ("cropped", "regular", "long"),
    "top": ("cropped", "regular", "long"),
    "shirt": ("cropped", "regular", "long"),
    "toptee": ("cropped", "regular", "long"),
}
NECKLINES: dict[str, tuple[str, ...]] = {
    "dress": ("v-neck", "round", "square", "turtleneck"),
    "top": ("v-neck", "round", "square", "turtleneck"),
    "toptee": ("v-neck", "round", "square", "turtleneck"),
    "shirt": ("collar", "v-neck", "round"),
    "jacket": ("lapel", "round", "v-neck"),
}
# Garments whose sleeves exist; jackets rarely go sleeveless.
SLEEVE_CHOICES: dict[str, tuple[str, ...]] = {
    "dress": SLEEVES,
    "top": SLEEVES,
    "toptee": SLEEVES,
    "shirt": ("sleeveless", "short", "elbow", "long"),
    "jacket": ("short", "elbow", "long"),
}
# Fabrics that make sense per garment (a leather skirt yes, a chiffon jacket no).
FABRIC_CHOICES: dict[str, tuple[str, ...]] = {
    "dress": ("cotton", "chiffon", "knitted", "leather"),
    "skirt": ("cotton", "denim", "leather", "chiffon"),
    "pants": ("cotton", "denim", "leather"),
    "jacket": ("denim", "leather", "cotton", "furry", "knitted"),
    "top": ("cotton", "chiffon", "knitted"),
    "shirt": ("cotton", "denim", "chiffon"),
    "toptee": ("cotton", "knitted", "chiffon"),
}

ATTRIBUTE_NAMES = ("colour", "colour2", "pattern", "sleeve", "length", "neckline", "fit", "fabric")


@dataclass(frozen=True)
class Garment:
    """The true attributes of one synthetic item. ``None`` means the attribute does not apply."""

    garment: str
    colour: str
    colour2: str
    pattern: str
    sleeve: str | None
    length: str
    neckline: str | None
    fit: str
    fabric: str

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def differences(self, other: Garment) -> list[str]:
        """Names of the visible attributes in which two items differ (colour2 only matters with a pattern)."""
        diff = [
            name
            for name in ("colour", "pattern", "sleeve", "length", "neckline", "fit", "fabric")
            if getattr(self, name) != getattr(other, name)
        ]
        if self.pattern != "solid" and other.pattern != "solid" and self.colour2 != other.colour2:
            diff.append("colour2")
        return diff


def stable_rng(seed: int, *key: object) -> np.random.Generator:
    """A generator that depends only on the seed and the key, never on call order.

    Items get their own streams so that changing one size in the config does not reshuffle
    every other item (and so that parallel generation would give the same bytes).
    """
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def pick(rng: np.random.Generator, choices: tuple[str, ...] | list[str]) -> str:
    return choices[int(rng.integers(len(choices)))]


def sample_garment(rng: np.random.Generator, garment: str) -> Garment:
    if garment not in GARMENTS:
        raise ValueError(f"unknown garment {garment!r}; expected one of {GARMENTS}")
    colours = list(COLOURS)
    colour = pick(rng, colours)
    colour2 = pick(rng, [c for c in colours if c != colour])
    # Solid garments dominate real catalogues.
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.4, 0.14, 0.12, 0.12, 0.12, 0.1]))]
    return Garment(
        garment=garment,
        colour=colour,
        colour2=colour2,
        pattern=pattern,
        sleeve=pick(rng, SLEEVE_CHOICES[garment]) if garment in SLEEVE_CHOICES else None,
        length=pick(rng, LENGTHS[garment]),
        neckline=pick(rng, NECKLINES[garment]) if garment in NECKLINES else None,
        fit=pick(rng, FITS),
        fabric=pick(rng, FABRIC_CHOICES[garment]),
    )


def mutate_garment(rng: np.random.Generator, base: Garment, n_changes: int) -> Garment:
    """A garment that differs from ``base`` in ``n_changes`` attributes (a plausible CIR target)."""
    fields = base.as_dict()
    candidates = ["colour", "pattern", "length", "fit", "fabric"]
    if base.sleeve is not None:
        candidates.append("sleeve")
    if base.neckline is not None:
        candidates.append("neckline")
    order = rng.permutation(len(candidates))
    for index in order[:n_changes]:
        name = candidates[int(index)]
        if name == "colour":
            options = [c for c in COLOURS if c != base.colour]
        elif name == "pattern":
            options = [p for p in PATTERNS if p != base.pattern]
        elif name == "sleeve":
            options = [s for s in SLEEVE_CHOICES[base.garment] if s != base.sleeve]
        elif name == "neckline":
            options = [n for n in NECKLINES[base.garment] if n != base.neckline]
        elif name == "length":
            options = [v for v in LENGTHS[base.garment] if v != base.length]
        elif name == "fit":
            options = [f for f in FITS if f != base.fit]
        else:
            options = [f for f in FABRIC_CHOICES[base.garment] if f != base.fabric]
        fields[name] = pick(rng, options)
    if fields["colour2"] == fields["colour"]:
        fields["colour2"] = pick(rng, [c for c in COLOURS if c != fields["colour"]])
    return Garment(**fields)
