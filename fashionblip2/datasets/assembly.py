"""Assembling the released datasets from the annotation outputs.

- FACap in its released layout: ``cir_triplets/<cat>_train_triplets.json`` (FashionIQ-style rows:
  candidate, target, captions=[modification text]) and ``image_captions/<cat>_train_captions.json``
  (image -> long caption), with a data card. The leakage check's action applies here: with
  ``drop``, triplets touching an image that matches a FashionIQ val/test image, or whose target is
  its reference, leave FACap, and the card counts them and states the paper's claim as checked.
- enhFashionIQ (paper §5.1): one triplet per FashionIQ validation image, in FashionIQ's own
  ``captions/cap.<cat>.val.json`` format with its ``image_splits``, so the evaluation reads it unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from fashionblip2.common.io import atomic_directory, dumps_json
from fashionblip2.datasets.leakage import drop_leaked


def _native(image_id: str) -> str:
    """FashionIQ rows are ``fashioniq:<cat>:<asin>``; other sources keep their id after the source."""
    parts = image_id.split(":")
    return parts[-1] if parts[0] == "fashioniq" else ":".join(parts[1:])


def _write_tree(out_dir: str | os.PathLike[str], files: dict[str, Any]) -> None:
    """Write JSON files into a temporary folder, then move it into place whole."""
    with atomic_directory(out_dir) as tmp:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            text = content if isinstance(content, str) else json.dumps(content, indent=4, ensure_ascii=False) + "\n"
            path.write_text(text, encoding="utf-8")


def join_annotations(pairs: pd.DataFrame, modifications: pd.DataFrame) -> pd.DataFrame:
    ok = modifications[modifications["status"] == "ok"][["reference_id", "target_id", "text"]]
    return pairs.merge(ok, on=["reference_id", "target_id"], how="inner")


def assemble_facap(
    pairs: pd.DataFrame,
    captions: pd.DataFrame,
    modifications: pd.DataFrame,
    sources: list[str],
    out_dir: str | os.PathLike[str],
    card: dict[str, Any],
    leakage: dict[str, Any],
    leakage_action: str,
) -> dict[str, Any]:
    """``leakage``: the leakage rule's summary; ``leakage_action``: report or drop."""
    annotated = join_annotations(pairs[pairs["source"].isin(sources)], modifications)
    triplets, leakage_card = drop_leaked(annotated, leakage, leakage_action)
    ok_captions = captions[captions["status"] == "ok"].set_index("image_id")["text"]
    files: dict[str, Any] = {}
    counts = {}
    for category, g in triplets.groupby("category", sort=True):
        files[f"cir_triplets/{category}_train_triplets.json"] = [
            {"candidate": _native(r.reference_id), "target": _native(r.target_id), "captions": [r.text]}
            for r in g.itertuples()
        ]
        images = sorted(set(g["reference_id"]) | set(g["target_id"]))
        files[f"image_captions/{category}_train_captions.json"] = {
            _native(i): ok_captions[i] for i in images if i in ok_captions.index
        }
        counts[str(category)] = {"triplets": int(len(g)), "images": len(images)}
    dropped = int(pairs["source"].isin(sources).sum() - len(annotated))
    card = {
        **card,
        "categories": counts,
        "triplets": int(len(triplets)),
        "pairs_without_an_accepted_modification_text": dropped,
        "leakage": leakage_card,
    }
    files["data_card.json"] = dumps_json(card)
    _write_tree(out_dir, files)
    return card


def assemble_enhfashioniq(
    pairs: pd.DataFrame,
    modifications: pd.DataFrame,
    fashioniq_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    card: dict[str, Any],
) -> dict[str, Any]:
    """One triplet per FashionIQ val image (as reference), captions and image splits in FashionIQ's format."""
    triplets = join_annotations(pairs[pairs["source"] == "fashioniq"], modifications)
    files: dict[str, Any] = {}
    counts = {}
    for category in sorted(set(pairs.loc[pairs["source"] == "fashioniq", "category"])):
        g = triplets[triplets["category"] == category]
        files[f"captions/cap.{category}.val.json"] = [
            {"target": _native(r.target_id), "candidate": _native(r.reference_id), "captions": [r.text]}
            for r in g.itertuples()
        ]
        split = Path(fashioniq_root) / "image_splits" / f"split.{category}.val.json"
        files[f"image_splits/split.{category}.val.json"] = split.read_text(encoding="utf-8")
        counts[category] = int(len(g))
    card = {
        **card,
        "triplets_per_category": counts,
        "triplets": int(sum(counts.values())),
        "images_dir": str(Path(fashioniq_root) / "images"),
    }
    files["data_card.json"] = dumps_json(card)
    _write_tree(out_dir, files)
    return card
