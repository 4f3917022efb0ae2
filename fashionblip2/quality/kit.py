"""The annotation kit for Table 2: one self-contained HTML page per annotator (images embedded as
data URIs, no server, no network: the page's content security policy forbids any request), and the
same items as a CSV template with an images/ folder for people who prefer a spreadsheet.

Texts come from an LLM, so nothing is ever inserted as markup: the items travel as JSON inside a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, and the page sets
them with ``textContent``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
from pathlib import Path

import pandas as pd
from PIL import Image

from fashionblip2.common.images import load_rgb
from fashionblip2.common.io import write_text_atomic
from fashionblip2.quality.table2 import CRITERIA, annotator_order

TEMPLATE = Path(__file__).with_name("templates") / "annotation_kit.html"
CRITERION_HELP = {
    "faithfulness": "Are the changes it states true of the target (no invented or wrong changes)?",
    "details": "How many of the real differences does it name, and how precisely?",
    "saliency": "Does it single out the target, or would many other images fit it too?",
}


def thumbnail_jpeg(path: str | os.PathLike[str], size: int) -> bytes:
    image = load_rgb(path)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()


def script_json(obj: object) -> str:
    """JSON that cannot end its <script> block or open markup, whatever the strings hold."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def spreadsheet_safe(text: str) -> str:
    """A cell a spreadsheet shows as text: one that starts like a formula (=, +, -, @, or a tab or
    carriage return before one) gets a leading apostrophe, as OWASP advises against CSV injection.
    The texts come from models and datasets, and annotators open these files in spreadsheets."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def kit_id(items: pd.DataFrame) -> str:
    """Identifies the sample: a new sample never reuses scores kept in the browser for another."""
    return hashlib.sha256(items[["item_id", "reference_id", "target_id", "text"]].to_csv().encode()).hexdigest()[:12]


def write_kit(
    items: pd.DataFrame,
    image_paths: dict[str, str],
    out_dir: str | os.PathLike[str],
    annotators: int,
    seed: int,
    image_size: int = 320,
) -> list[Path]:
    """``annotator_<k>.html`` and ``annotator_<k>.csv`` for k = 1..annotators, plus ``images/``.
    The dataset column is never written to the kit."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pictures: dict[str, dict[str, str]] = {}
    for item in items.itertuples():
        pictures[item.item_id] = {}
        for role, image_id in (("reference", item.reference_id), ("target", item.target_id)):
            data = thumbnail_jpeg(image_paths[image_id], image_size)
            (out / "images" / f"{item.item_id}_{role}.jpg").write_bytes(data)
            pictures[item.item_id][role] = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    text_of = dict(zip(items["item_id"], items["text"], strict=True))
    criteria = [{"name": c, "label": c.capitalize(), "help": CRITERION_HELP[c]} for c in CRITERIA]
    template = TEMPLATE.read_text(encoding="utf-8")
    written = []
    for k in range(1, annotators + 1):
        order = annotator_order(list(items["item_id"]), k, seed)
        data = {
            "kit_id": kit_id(items),
            "annotator": str(k),
            "criteria": criteria,
            "items": [{"id": i, "text": text_of[i], **pictures[i]} for i in order],
        }
        page = template.replace("__ANNOTATOR__", html.escape(str(k))).replace("__DATA__", script_json(data))
        write_text_atomic(out / f"annotator_{k}.html", page)
        sheet = pd.DataFrame(
            {
                "item_id": order,
                "reference_image": [f"images/{i}_reference.jpg" for i in order],
                "target_image": [f"images/{i}_target.jpg" for i in order],
                "text": [spreadsheet_safe(text_of[i]) for i in order],
                **{c: "" for c in CRITERIA},
                "annotator": str(k),
            }
        )
        write_text_atomic(out / f"annotator_{k}.csv", sheet.to_csv(index=False))
        written += [out / f"annotator_{k}.html", out / f"annotator_{k}.csv"]
    return written
