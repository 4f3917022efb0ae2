"""How FashionIQ's two relative captions of a triplet become one text, as SPRC and CLIP4Cir do it:
joined for evaluation, drawn at random for training. Datasets (training, the quality sample) and the
evaluation protocol read them here, so that neither depends on the other.

The clean-up of a text before it is tokenised (config ``text.cleanup``) is here too: ``none`` (the
text as it is) or ``sprc``, SPRC's: its training and validation code passes every text, after the
captions are joined or drawn, through LAVIS's ``blip_caption`` processor (``txt_processors["eval"]``,
``BlipCaptionProcessor.pre_caption``): lower-cased, each of ``.!"()*#:;~`` replaced by a space, runs
of spaces collapsed, the ends stripped, and cut to its first 50 words (the processor's ``max_words``;
we assume SPRC's model configs leave it at that default, as LAVIS's BLIP-2 configs do)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

TEXT_CLEANUPS = ("none", "sprc")
SPRC_MAX_WORDS = 50  # LAVIS BlipCaptionProcessor's max_words
_SPRC_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


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


def clean_text(text: str, cleanup: str) -> str:
    """The text that reaches the tokenizer under ``cleanup`` (``none`` | ``sprc``; see the module)."""
    if cleanup == "none":
        return text
    if cleanup != "sprc":
        raise ValueError(f"text cleanup must be one of {TEXT_CLEANUPS}, not {cleanup!r}")
    text = _SPACES.sub(" ", _SPRC_PUNCTUATION.sub(" ", text.lower())).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:SPRC_MAX_WORDS]) if len(words) > SPRC_MAX_WORDS else text
