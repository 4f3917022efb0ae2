"""How FashionIQ's two relative captions of a triplet become one text, as SPRC and CLIP4Cir do it:
joined for evaluation, drawn at random for training. Datasets (training, the quality sample) and the
evaluation protocol read them here, so that neither depends on the other."""

from __future__ import annotations

import random
from collections.abc import Sequence


def _strip(caption: str) -> str:
    return caption.strip(".?, ")


def join_captions(captions: Sequence[str]) -> str:
    """The evaluation text of a FashionIQ triplet (Python's capitalize(), as in the reference code)."""
    return f"{_strip(captions[0]).capitalize()} and {_strip(captions[1])}"


def random_caption(captions: Sequence[str], rng: random.Random) -> str:
    """A training text: "c1 and c2", "c2 and c1", c1 or c2, each with probability 1/4."""
    c1, c2 = captions[0], captions[1] if len(captions) > 1 else captions[0]
    r = rng.random()
    if r < 0.25:
        return f"{_strip(c1).capitalize()} and {_strip(c2)}"
    if r < 0.5:
        return f"{_strip(c2).capitalize()} and {_strip(c1)}"
    return _strip(c1 if r < 0.75 else c2).capitalize()
