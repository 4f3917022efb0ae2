"""Checks of model answers before they are accepted (and cached)."""

from __future__ import annotations

import re

from fashionblip2.annotation.lexicon import names_a_difference

REFUSAL = re.compile(
    r"(\bi'?m sorry\b|\bi am sorry\b|\bi cannot\b|\bi can'?t\b|\bas an ai\b|\bunable to (help|assist|describe)\b)",
    re.IGNORECASE,
)
MEDIA = re.compile(r"\b(image|images|picture|pictures|photo|photos|photograph)\b", re.IGNORECASE)


def check_caption(text: str | None, max_words: int) -> str | None:
    """None if the caption is acceptable, else the reason it is rejected."""
    if text is None or not text.strip():
        return "empty text"
    if REFUSAL.search(text):
        return "refusal"
    if len(text.split()) > max_words:
        return f"too long: {len(text.split())} words (limit {max_words})"
    return None


def check_modification(text: str | None, max_words: int) -> str | None:
    """None if the modification text is acceptable, else the reason it is rejected."""
    reason = check_caption(text, max_words)
    if reason:
        return reason
    if MEDIA.search(text):
        return "mentions the image or picture"
    if not names_a_difference(text):
        return "names no difference"
    return None
