"""Texts of the synthetic world, as noisy as the real ones.

Product descriptions (Fashion200k) drop attributes, use synonyms and are sometimes wrong;
DeepFashion-MultiModal captions are templated sentences; FashionIQ relative captions are short,
sometimes vague, sometimes wrong, two per pair by different "annotators".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fashionblip2.sources.deepfashion import TEXTURE_SLOTS
from fashionblip2.synthetic.attributes import (
    COLOURS,
    FABRIC_CHOICES,
    FITS,
    LENGTHS,
    NECKLINES,
    PATTERNS,
    SLEEVE_CHOICES,
    Garment,
    pick,
)

COLOUR_SYNONYMS = {
    "black": ["black", "jet black", "noir"],
    "white": ["white", "ivory", "off-white"],
    "grey": ["grey", "gray", "charcoal"],
    "beige": ["beige", "camel", "sand"],
    "brown": ["brown", "chocolate", "tan"],
    "red": ["red", "crimson", "scarlet"],
    "pink": ["pink", "blush", "rose"],
    "orange": ["orange", "tangerine", "rust"],
    "yellow": ["yellow", "mustard", "lemon"],
    "green": ["green", "olive", "emerald"],
    "blue": ["blue", "cobalt", "royal blue"],
    "navy": ["navy", "midnight blue", "dark blue"],
    "purple": ["purple", "violet", "plum"],
}
PATTERN_WORDS = {
    "solid": ["", "solid"],
    "stripes": ["striped", "stripe", "breton stripe"],
    "dots": ["polka dot", "dotted", "spotted"],
    "plaid": ["plaid", "check", "tartan"],
    "floral": ["floral", "floral print", "flower print"],
    "colour block": ["colorblock", "color block", "two-tone"],
}
GARMENT_WORDS = {
    "dress": ["dress", "dress", "frock"],
    "skirt": ["skirt"],
    "pants": ["pants", "trousers"],
    "jacket": ["jacket", "blazer", "coat"],
    "top": ["top", "blouse", "cami top"],
    "shirt": ["shirt", "button-down shirt", "button-up"],
    "toptee": ["tee", "t-shirt", "top"],
}
LENGTH_WORDS = {
    "mini": ["mini", "short"],
    "knee": ["knee-length", "knee"],
    "midi": ["midi", "mid-length"],
    "maxi": ["maxi", "floor-length", "long"],
    "shorts": ["shorts"],
    "cropped": ["cropped", "ankle"],
    "full": ["full-length", "long"],
    "regular": [""],
    "long": ["longline", "long"],
}
SLEEVE_WORDS = {
    "sleeveless": ["sleeveless"],
    "short": ["short-sleeve", "short sleeve"],
    "elbow": ["elbow-sleeve", "3/4 sleeve"],
    "long": ["long-sleeve", "long sleeve"],
}
NECK_WORDS = {
    "v-neck": ["v-neck"],
    "round": ["crew neck", "round-neck"],
    "square": ["square-neck"],
    "turtleneck": ["turtleneck", "mock-neck"],
    "collar": ["collared", "point-collar"],
    "lapel": ["notch-lapel", "lapel"],
}
FIT_WORDS = {"slim": ["slim-fit", "fitted", "bodycon"], "regular": [""], "loose": ["relaxed", "oversized", "loose-fit"]}
MARKETING = ["chic", "classic", "essential", "designer", "new season", "signature", "modern", "vintage-inspired"]


@dataclass(frozen=True)
class Noise:
    """How unreliable product texts and human captions are (probabilities)."""

    drop_attribute: float
    synonym: float
    wrong_attribute: float
    marketing: float
    vague_caption: float
    wrong_caption: float


def corrupt(rng: np.random.Generator, g: Garment, p_wrong: float) -> Garment:
    """The garment as a careless cataloguer might describe it: each attribute wrong with ``p_wrong``."""
    changes: dict[str, str] = {}
    if rng.random() < p_wrong:
        changes["colour"] = pick(rng, [c for c in COLOURS if c != g.colour])
    if rng.random() < p_wrong:
        changes["pattern"] = pick(rng, [p for p in PATTERNS if p != g.pattern])
    if rng.random() < p_wrong:
        changes["length"] = pick(rng, [v for v in LENGTHS[g.garment] if v != g.length])
    if g.sleeve is not None and rng.random() < p_wrong:
        changes["sleeve"] = pick(rng, [s for s in SLEEVE_CHOICES[g.garment] if s != g.sleeve])
    if g.neckline is not None and rng.random() < p_wrong:
        changes["neckline"] = pick(rng, [n for n in NECKLINES[g.garment] if n != g.neckline])
    if rng.random() < p_wrong:
        changes["fit"] = pick(rng, [f for f in FITS if f != g.fit])
    if rng.random() < p_wrong:
        changes["fabric"] = pick(rng, [f for f in FABRIC_CHOICES[g.garment] if f != g.fabric])
    return replace(g, **changes)


def _word(rng: np.random.Generator, words: list[str], noise: Noise) -> str:
    return words[0] if rng.random() >= noise.synonym else pick(rng, words)


def product_description(rng: np.random.Generator, g: Garment, noise: Noise) -> str:
    """A Fashion200k-style product title: lowercase, short, attribute words before the garment noun."""
    shown = corrupt(rng, g, noise.wrong_attribute)
    parts: list[str] = []

    def maybe(words: list[str]) -> None:
        if rng.random() >= noise.drop_attribute:
            parts.append(_word(rng, words, noise))

    if rng.random() < noise.marketing:
        parts.append(pick(rng, MARKETING))
    maybe(COLOUR_SYNONYMS[shown.colour])
    if shown.pattern == "colour block" or (shown.pattern != "solid" and rng.random() < 0.5):
        maybe(COLOUR_SYNONYMS[shown.colour2])
    maybe(PATTERN_WORDS[shown.pattern])
    maybe(FIT_WORDS[shown.fit])
    if shown.sleeve is not None:
        maybe(SLEEVE_WORDS[shown.sleeve])
    if shown.neckline is not None:
        maybe(NECK_WORDS[shown.neckline])
    maybe([shown.fabric])
    maybe(LENGTH_WORDS[shown.length])
    noun = _word(rng, GARMENT_WORDS[g.garment], noise)
    if g.garment == "pants" and shown.length == "shorts":
        noun = "shorts"
    if g.garment == "pants" and shown.fabric == "denim" and rng.random() < 0.6:
        noun = "jeans"
    parts.append(noun)
    text = " ".join(p for p in parts if p)
    return " ".join(text.split()).lower()


# --- DeepFashion-MultiModal -------------------------------------------------------------------


_SLEEVE_CODE = {"sleeveless": 0, "short": 1, "elbow": 2, "long": 3}
_LOWER_CODE = {"mini": 0, "shorts": 0, "knee": 1, "midi": 2, "cropped": 2, "maxi": 3, "full": 3}
_NECK_CODE = {"v-neck": 0, "square": 1, "round": 2, "turtleneck": 4, "collar": 5, "lapel": 5}
_FABRIC_CODE = {"denim": 0, "cotton": 1, "leather": 2, "furry": 3, "knitted": 4, "chiffon": 5}
_PATTERN_CODE = {"floral": 0, "stripes": 2, "solid": 3, "plaid": 4, "dots": 5, "colour block": 6}


def deepfashion_labels(rng: np.random.Generator, g: Garment) -> tuple[list[int], list[int], list[int]]:
    """Shape codes (12) and fabric / pattern codes (upper, lower, outer) for one worn garment."""
    upper = g.garment in ("dress", "top", "shirt", "toptee")
    lower = g.garment in ("dress", "skirt", "pants")
    shape = [
        _SLEEVE_CODE[g.sleeve] if g.sleeve is not None else (5 if not upper else 0),
        _LOWER_CODE[g.length] if lower else 3,  # the figure wears long trousers under tops
        int(rng.choice([0, 0, 0, 1, 3])),
        int(rng.choice([0, 0, 0, 1])),
        int(rng.choice([0, 0, 0, 1, 2])),
        int(rng.choice([0, 0, 1])),
        int(rng.choice([0, 1, 2])),
        int(rng.choice([0, 0, 1, 2])),
        int(rng.choice([0, 1, 2, 3])),
        _NECK_CODE[g.neckline] if g.neckline is not None else 7,
        (0 if g.fabric == "knitted" else 1) if g.garment == "jacket" else 2,
        int(rng.choice([0, 1])) if upper else 2,
    ]
    fabric = [7, 7, 7]
    pattern = [7, 7, 7]
    slots = (
        ["outer"]
        if g.garment == "jacket"
        else (["upper", "lower"] if g.garment == "dress" else ["lower"] if lower else ["upper"])
    )
    for slot in slots:
        i = TEXTURE_SLOTS.index(slot)
        fabric[i] = _FABRIC_CODE[g.fabric]
        pattern[i] = _PATTERN_CODE[g.pattern]
    return shape, fabric, pattern


def deepfashion_caption(rng: np.random.Generator, g: Garment, gender: str, noise: Noise) -> str:
    """A DeepFashion-MultiModal style description, built from (sometimes wrong) attributes."""
    shown = corrupt(rng, g, noise.wrong_attribute)
    person = pick(rng, ["lady", "woman", "female"] if gender == "WOMEN" else ["gentleman", "man", "guy"])
    pronoun = "Her" if gender == "WOMEN" else "His"
    noun = {
        "dress": "dress",
        "skirt": "skirt",
        "pants": "trousers" if shown.length != "shorts" else "shorts",
        "jacket": "jacket",
        "top": "top",
        "shirt": "shirt",
        "toptee": "T-shirt",
    }[g.garment]
    pattern = {
        "solid": "pure color",
        "stripes": "stripe",
        "dots": "dotted",
        "plaid": "lattice",
        "floral": "floral",
        "colour block": "color block",
    }[shown.pattern]
    sentences = []
    if shown.sleeve is not None:
        sleeve = {"sleeveless": "sleeveless", "short": "short-sleeve", "elbow": "medium-sleeve", "long": "long-sleeve"}[
            shown.sleeve
        ]
        sentences.append(f"The {person} wears a {sleeve} {noun} with {pattern} patterns.")
    else:
        length = {
            "mini": "short",
            "shorts": "three-point",
            "knee": "medium-length",
            "midi": "three-quarter",
            "cropped": "three-quarter",
            "maxi": "long",
            "full": "long",
        }[shown.length]
        sentences.append(f"This {person} is wearing a {length} {noun} with {pattern} patterns.")
    sentences.append(f"The {noun} is with {shown.fabric} fabric.")
    if shown.neckline is not None and rng.random() >= noise.drop_attribute:
        sentences.append(f"It has a {shown.neckline.replace('-', ' ')} neckline.")
    if rng.random() < 0.4:
        sentences.append(
            pick(
                rng,
                [
                    f"{pronoun} outfit looks {pick(rng, ['casual', 'elegant', 'smart'])}.",
                    "There is an accessory on the wrist.",
                    "This person wears a ring.",
                ],
            )
        )
    return " ".join(sentences)


# --- FashionIQ relative captions --------------------------------------------------------------

LENGTH_PHRASES = {
    "mini": "is a mini",
    "knee": "is knee length",
    "midi": "is midi length",
    "maxi": "is a maxi",
    "shorts": "is shorts",
    "cropped": "is cropped",
    "full": "is full length",
    "regular": "is regular length",
    "long": "is long",
}
VAGUE = [
    "is more fashionable",
    "looks nicer",
    "is more casual",
    "is prettier",
    "has a different style",
    "is more elegant",
    "is similar but more modern",
    "is more fun",
]


def relative_phrase(rng: np.random.Generator, ref: Garment, tgt: Garment, attribute: str) -> str:
    """A short human phrase saying how the target differs from the reference in one attribute."""
    if attribute == "colour":
        lum = sum(COLOURS[tgt.colour]) - sum(COLOURS[ref.colour])
        options = [f"is {tgt.colour}", f"is {tgt.colour} in color", f"is {tgt.colour} colored"]
        if abs(lum) > 120:
            options.append("is darker" if lum < 0 else "is lighter")
        return pick(rng, options)
    if attribute == "colour2":
        return f"has {tgt.colour2} accents"
    if attribute == "pattern":
        return {
            "solid": pick(rng, ["is solid", "is plain", "has no pattern"]),
            "stripes": pick(rng, ["has stripes", "is striped"]),
            "dots": pick(rng, ["has polka dots", "is dotted"]),
            "plaid": pick(rng, ["is plaid", "has a checkered pattern"]),
            "floral": pick(rng, ["is floral", "has a flower print"]),
            "colour block": pick(rng, ["is two toned", "has color blocks"]),
        }[tgt.pattern]
    if attribute == "sleeve":
        order = ["sleeveless", "short", "elbow", "long"]
        if tgt.sleeve == "sleeveless":
            return pick(rng, ["is sleeveless", "has no sleeves"])
        if rng.random() < 0.5 and ref.sleeve is not None:
            return "has longer sleeves" if order.index(tgt.sleeve) > order.index(ref.sleeve) else "has shorter sleeves"
        return f"has {tgt.sleeve} sleeves" if tgt.sleeve != "elbow" else "has 3/4 sleeves"
    if attribute == "length":
        order = LENGTHS[tgt.garment]
        longer = order.index(tgt.length) > order.index(ref.length)
        named = LENGTH_PHRASES[tgt.length]
        return pick(rng, ["is longer", named] if longer else ["is shorter", named])
    if attribute == "neckline":
        return pick(rng, [f"has a {tgt.neckline}", f"has a {tgt.neckline} neckline"])
    if attribute == "fit":
        return {
            "slim": pick(rng, ["is tighter", "is more fitted"]),
            "regular": "is less baggy",
            "loose": pick(rng, ["is looser", "is more flowy"]),
        }[tgt.fit]
    if attribute == "fabric":
        return pick(rng, [f"is {tgt.fabric}", f"is made of {tgt.fabric}"])
    raise ValueError(f"unknown attribute {attribute!r}")


def relative_caption(rng: np.random.Generator, ref: Garment, tgt: Garment, noise: Noise) -> str:
    """One FashionIQ-style relative caption: one or two differences, or a vague or wrong remark."""
    diffs = ref.differences(tgt)
    if not diffs or rng.random() < noise.vague_caption:
        return pick(rng, VAGUE)
    if rng.random() < noise.wrong_caption:
        wrong = corrupt(rng, tgt, 1.0)  # an annotator who misread the target image
        diffs_wrong = tgt.differences(wrong)
        if diffs_wrong:
            return relative_phrase(rng, ref, wrong, pick(rng, diffs_wrong))
    order = rng.permutation(len(diffs))
    chosen = [diffs[int(i)] for i in order[: 1 + int(rng.random() < 0.4)]]
    return " and ".join(relative_phrase(rng, ref, tgt, a) for a in chosen)
