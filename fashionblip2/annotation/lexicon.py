"""A small fashion lexicon: surface words for garment attributes, to read attributes out of free text.

Used by the offline backends (the metadata captioner reads noisy product texts with it, the rules
differ compares two captions with it) and by the output validator (does a text name a difference?).
"""

from __future__ import annotations

import re

# attribute -> canonical value -> surface forms (lowercase). Longer forms are matched first.
LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {
        "black": ("black", "jet black", "noir"),
        "white": ("white", "ivory", "off-white", "cream"),
        "grey": ("grey", "gray", "charcoal"),
        "beige": ("beige", "camel", "sand", "nude"),
        "brown": ("brown", "chocolate", "tan"),
        "red": ("red", "crimson", "scarlet", "burgundy"),
        "pink": ("pink", "blush", "rose"),
        "orange": ("orange", "tangerine", "rust"),
        "yellow": ("yellow", "mustard", "lemon"),
        "green": ("green", "olive", "emerald"),
        "blue": ("blue", "cobalt", "royal blue", "light blue"),
        "navy": ("navy", "midnight blue", "dark blue"),
        "purple": ("purple", "violet", "plum"),
    },
    "pattern": {
        "solid": ("solid", "plain", "pure color", "pure colour", "no pattern"),
        "stripes": ("striped", "stripes", "stripe", "breton stripe"),
        "dots": ("polka dot", "polka dots", "dotted", "spotted", "dots"),
        "plaid": ("plaid", "check", "checked", "checkered", "tartan", "lattice"),
        "floral": ("floral", "flower print", "flowers"),
        "colour block": ("colorblock", "color block", "colour block", "two-tone", "two toned", "color blocks"),
    },
    "sleeve": {
        "sleeveless": ("sleeveless", "no sleeves", "strapless"),
        "short": ("short-sleeve", "short sleeve", "short sleeves", "short-sleeved"),
        "elbow": ("elbow-sleeve", "3/4 sleeve", "3/4 sleeves", "medium-sleeve", "elbow-length sleeves"),
        "long": ("long-sleeve", "long sleeve", "long sleeves", "long-sleeved"),
    },
    "neckline": {
        "v-neck": ("v-neck", "v neck", "v-shape", "v-neckline"),
        "round": ("crew neck", "round-neck", "round neck", "round"),
        "square": ("square-neck", "square neck", "square"),
        "turtleneck": ("turtleneck", "mock-neck", "standing"),
        "collar": ("collared", "point-collar", "collar"),
        "lapel": ("notch-lapel", "lapel", "lapels"),
    },
    "length": {
        "mini": ("mini", "three-point"),
        "knee": ("knee-length", "knee length", "medium-length", "medium short"),
        "midi": ("midi", "mid-length", "three-quarter"),
        "maxi": ("maxi", "floor-length", "ankle-length"),
        "cropped": ("cropped", "crop"),
        "full": ("full-length", "full length"),
        "shorts": ("shorts",),
        "long": ("longline",),
    },
    "fit": {
        "slim": ("slim-fit", "slim fit", "fitted", "bodycon", "form-fitting", "tight"),
        "loose": ("relaxed", "oversized", "loose-fit", "loose", "flowy", "baggy"),
    },
    "fabric": {
        "denim": ("denim", "jeans"),
        "leather": ("leather",),
        "knitted": ("knitted", "knit"),
        "chiffon": ("chiffon", "sheer"),
        "furry": ("furry", "fur", "faux fur"),
        "cotton": ("cotton",),
        "silk": ("silk", "satin"),
    },
    "garment": {
        "dress": ("dress", "frock", "gown"),
        "skirt": ("skirt",),
        "pants": ("pants", "trousers", "jeans", "shorts"),
        "jacket": ("jacket", "blazer", "coat"),
        "shirt": ("shirt", "button-down", "button-up"),
        "top": ("top", "blouse", "cami", "tee", "t-shirt"),
    },
}
COMPARATIVES = re.compile(
    r"\b(instead|rather than|more|less|longer|shorter|darker|lighter|looser|tighter|wider|narrower|"
    r"brighter|removed|added|switch(?:es|ed)?|change[sd]?|replac\w+|now)\b"
)


def _pattern(forms: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = sorted(forms, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in alternatives) + r")(?![\w-])")


_MATCHERS = {attr: [(value, _pattern(forms)) for value, forms in values.items()] for attr, values in LEXICON.items()}


def find_attributes(text: str) -> dict[str, str]:
    """The first value of each attribute named in ``text`` (by position in the text)."""
    text = text.lower()
    found: dict[str, str] = {}
    for attr, matchers in _MATCHERS.items():
        best: tuple[int, str] | None = None
        for value, pattern in matchers:
            m = pattern.search(text)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), value)
        if best is not None:
            found[attr] = best[1]
    return found


def names_a_difference(text: str) -> bool:
    """Whether a modification text names some change: an attribute word or a comparative."""
    return bool(find_attributes(text)) or bool(COMPARATIVES.search(text.lower()))
