"""Model backends for both annotation stages.

A backend turns requests into texts and reports each result through a callback as soon as it
exists, so the caller can validate and cache it at once (a killed job loses nothing it paid for).

- ``metadata`` captioner and ``rules`` differ: offline, deterministic (the embedded default).
- ``openai`` and ``openai-batch``: any OpenAI-compatible server, in :mod:`.openai_chat` and
  :mod:`.openai_batch`.
- ``transformers``: a Hugging Face vision-language model from a local folder, batched generation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashionblip2.annotation.lexicon import LEXICON, find_attributes
from fashionblip2.annotation.planted_errors import PlantedErrors, planted_kind, value_draw
from fashionblip2.common.colours import NAMED_COLOURS
from fashionblip2.common.images import load_rgb
from fashionblip2.common.issues import BadInputError

log = logging.getLogger(__name__)
OnResult = Callable[[int, "str | None", "str | None"], None]  # (index, text, error)


@dataclass
class Request:
    """One question to a model. ``keyed`` is what identifies the answer (the cache key is made of it);
    ``extra`` is what the backend needs besides (an image path, the raw fields)."""

    keyed: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


# --- offline backends -----------------------------------------------------------------------------

_PALETTE = np.array(list(NAMED_COLOURS.values()), dtype=np.float32)
_PALETTE_NAMES = list(NAMED_COLOURS)


def garment_colours(path: str) -> list[str]:
    """Named colours of the garment, most frequent first: pixels unlike the background (the corners)."""
    img = np.asarray(load_rgb(path).resize((48, 48)), dtype=np.float32).reshape(-1, 3)
    grid = img.reshape(48, 48, 3)
    background = np.median(np.stack([grid[0, 0], grid[0, -1], grid[-1, 0], grid[-1, -1]]), axis=0)
    fg = img[np.abs(img - background).sum(axis=1) > 60]
    if len(fg) < 20:
        fg = img
    names = np.argmin(((fg[:, None, :] - _PALETTE[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(names, minlength=len(_PALETTE_NAMES))
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] >= 0.12 * len(fg)]
    return [_PALETTE_NAMES[i] for i in order[:2]]


PATTERN_WORDS = {
    "stripes": "striped",
    "dots": "polka-dot",
    "plaid": "plaid",
    "floral": "floral",
    "colour block": "colour-block",
}
NECKLINE_WORDS = {
    "v-neck": "a V-neck",
    "round": "a round neckline",
    "square": "a square neckline",
    "turtleneck": "a turtleneck",
    "collar": "a collar",
    "lapel": "lapels",
}
LENGTH_WORDS = {
    "mini": "mini",
    "knee": "knee-length",
    "midi": "midi",
    "maxi": "maxi",
    "cropped": "cropped",
    "full": "full-length",
    "shorts": "shorts-length",
    "long": "long",
    "regular": "regular length",
}
SLEEVE_WORDS = {"short": "short", "elbow": "elbow-length", "long": "long"}
FABRIC_ADJECTIVES = {"knitted", "furry"}


def _fabric(fabric: str) -> str:
    return f"is {fabric}" if fabric in FABRIC_ADJECTIVES else f"is made of {fabric}"


def _describe(category: str, a: dict[str, str], colours: list[str]) -> str:
    garment = a.get("garment", category)
    colour = colours[0] if colours else a.get("colour", "")
    pattern = a.get("pattern", "solid")
    words = [a.get("fit", "") if a.get("fit") != "regular" else "", colour, garment]
    text = f"A {' '.join(w for w in words if w)}"
    if pattern != "solid":
        second = colours[1] if len(colours) > 1 else ""
        text += f" with a {PATTERN_WORDS[pattern]} pattern" + (f" in {second}" if second else "")
    else:
        text += " in a solid colour"
    text += "."
    details = []
    if a.get("sleeve"):
        details.append("no sleeves" if a["sleeve"] == "sleeveless" else f"{SLEEVE_WORDS[a['sleeve']]} sleeves")
    if a.get("neckline"):
        details.append(NECKLINE_WORDS[a["neckline"]])
    if details:
        text += f" It has {' and '.join(details)}."
    if a.get("length"):
        text += f" It is {LENGTH_WORDS[a['length']]}."
    if a.get("fabric"):
        text += f" It {_fabric(a['fabric'])}."
    return text


class MetadataCaptioner:
    """Offline captioner: what a VLM would be given (category, product text, attributes), read with the
    fashion lexicon, plus the garment's colours read from the pixels. Never sees the ground truth."""

    name = "metadata"
    model = "lexicon-v3"  # bump when the code changes: cached answers are keyed by it

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        for i, r in enumerate(requests):
            text, error = None, None
            try:
                attrs = find_attributes(
                    " ".join([r.extra.get("product_text", ""), " ".join(r.extra.get("attributes", {}).values())])
                )
                text = _describe(r.extra["category"], attrs, garment_colours(r.extra["path"]))
            except Exception as e:  # noqa: BLE001 - one bad image must not stop the shard
                error = f"{type(e).__name__}: {e}"
            on_result(i, text, error)  # outside the try: a cache write error must stop the run


_ORDERS = {
    "length": ["mini", "shorts", "cropped", "knee", "midi", "full", "maxi", "long"],
    "sleeve": ["sleeveless", "short", "elbow", "long"],
}


def _phrase(attr: str, ref: str | None, tgt: str) -> str:
    if attr == "colour":
        return f"is {tgt}" + (f" instead of {ref}" if ref else "")
    if attr == "pattern":
        return "has no pattern" if tgt == "solid" else f"has a {PATTERN_WORDS[tgt]} pattern"
    if attr == "sleeve":
        if tgt == "sleeveless":
            return "is sleeveless"
        return f"has {SLEEVE_WORDS[tgt]} sleeves" + (
            f" instead of {SLEEVE_WORDS[ref]} ones" if ref in SLEEVE_WORDS else ""
        )
    if attr == "length":
        order = _ORDERS["length"]
        if ref in order and tgt in order:
            return f"is {'longer' if order.index(tgt) > order.index(ref) else 'shorter'}, {LENGTH_WORDS[tgt]}"
        return f"is {LENGTH_WORDS[tgt]}"
    if attr == "neckline":
        return f"has {NECKLINE_WORDS[tgt]}"
    if attr == "fit":
        return {"slim": "is more fitted", "loose": "is looser"}.get(tgt, f"has a {tgt} fit")
    if attr == "fabric":
        return _fabric(tgt)
    return f"is {tgt}"


class RulesDiffer:
    """Offline differ: compares the two captions attribute by attribute and names the differences.
    With ``planted`` error rates, a seeded share of its texts is wrong on purpose (see
    :mod:`.planted_errors`); the rates enter its model name, so cached answers never mix."""

    name = "rules"
    ORDER = ("colour", "pattern", "length", "sleeve", "neckline", "fit", "fabric")

    def __init__(self, planted: PlantedErrors | None = None):
        self.planted = planted if planted is not None and planted.active else None
        # bump the version when the code changes: cached answers are keyed by the model name
        self.model = "lexicon-v3" + (f"+{self.planted.tag}" if self.planted else "")

    def _body(self, ref: dict[str, str], tgt: dict[str, str]) -> list[str]:
        return [_phrase(a, ref.get(a), tgt[a]) for a in self.ORDER if a in tgt and tgt[a] != ref.get(a)]

    def answer(self, reference_caption: str, target_caption: str, category: str) -> tuple[str | None, str, str]:
        """(text or None, why not, the planted error applied or ""): the text of one pair."""
        ref, tgt = find_attributes(reference_caption), find_attributes(target_caption)
        phrases = self._body(ref, tgt)
        if not phrases:
            return None, "no attribute difference between the two captions", ""
        kind = planted_kind(self.planted, reference_caption, target_caption)
        if kind == "hallucination":
            attribute = next((a for a in self.ORDER if a in tgt and tgt[a] != ref.get(a)), "colour")
            values = [v for v in LEXICON[attribute] if v not in (tgt[attribute], ref.get(attribute))]
            if values:
                wrong = values[value_draw(self.planted, reference_caption, target_caption, len(values))]
                phrases[0] = _phrase(attribute, ref.get(attribute), wrong)
            else:
                kind = ""
        elif kind == "wrong_direction":
            backwards = self._body(tgt, ref)
            if backwards:
                phrases = backwards
            else:
                kind = ""
        elif kind == "target_only":
            return target_caption.split(".")[0].strip() + ".", "", kind
        garment = tgt.get("garment", category or "garment")
        body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"The {garment} {body}.", "", kind

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        for i, r in enumerate(requests):
            text, error, _ = self.answer(
                r.extra["reference_caption"], r.extra["target_caption"], r.extra.get("category", "garment")
            )
            on_result(i, text, error or None)


# --- Hugging Face transformers VLM -----------------------------------------------------------------


# The transformers-format (``-hf``) InternVL release of about the paper's size; InternVL2.5 itself was
# published with custom code only.
HF_FORMAT_RELEASE = "OpenGVLab/InternVL3-8B-hf"


def custom_code_reason(path: str | os.PathLike[str]) -> str | None:
    """Why the model folder at ``path`` is a custom-code checkpoint (one written for
    ``trust_remote_code``), or None if its config.json names a model transformers implements itself.

    A folder without config.json is left to transformers, whose own error names the missing file.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type and model_type not in CONFIG_MAPPING:
        return f"its config.json has model_type {model_type!r}, which transformers does not implement"
    if config.get("auto_map"):
        # Even where the model_type is known, the weights were laid out for the repository's own code.
        return (
            f"its config.json has auto_map (classes from the repository's own code: {', '.join(config['auto_map'])}); "
            "if the folder is in transformers format after all, remove auto_map from it"
        )
    return None


class TransformersCaptioner:
    """A vision-language model in Hugging Face format from a local folder, batched greedy generation."""

    name = "transformers"

    def __init__(self, path: str, *, max_new_tokens: int = 128, batch_size: int = 8, device: str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not os.path.isdir(path):
            raise BadInputError(
                f"annotation.caption.model_path {path!r} is not a folder: point it at a downloaded model"
            )
        # Checked before any weights load: custom code is never run here (trust_remote_code stays off), and
        # transformers' own refusal of such a folder does not say which checkpoint to get instead.
        reason = custom_code_reason(path)
        if reason:
            raise BadInputError(
                f"annotation.caption.model_path {path!r} is a custom-code checkpoint: {reason}. It needs "
                "trust_remote_code, which this workflow does not use. Download the transformers-format release "
                f"instead, e.g. {HF_FORMAT_RELEASE} for InternVL (its config.json has model_type 'internvl')"
            )
        self.model = os.path.basename(os.path.normpath(path))
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.net = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype).to(self.device)
        self.net.eval()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        import torch

        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            prompts = [
                self.processor.apply_chat_template(
                    [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image"},
                                {"type": "text", "text": r.keyed["messages"][-1]["content"]},
                            ],
                        }
                    ],
                    add_generation_prompt=True,
                )
                for r in chunk
            ]
            images = [load_rgb(r.extra["path"]) for r in chunk]
            inputs = self.processor(
                text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt"
            ).to(self.device)
            with torch.no_grad():
                out = self.net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for k, text in enumerate(texts):
                on_result(start + k, text.strip(), None)
