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
from fashionblip2.datasets.scores import score_card, score_columns

RELEASED_TABLE = "triplets.parquet"  # every triplet with its captions and scores, in one table


def _native(image_id: str) -> str:
    """FashionIQ rows are ``fashioniq:<cat>:<asin>``; other sources keep their id after the source."""
    parts = image_id.split(":")
    return parts[-1] if parts[0] == "fashioniq" else ":".join(parts[1:])


def _write_tree(
    out_dir: str | os.PathLike[str], files: dict[str, Any], tables: dict[str, pd.DataFrame] | None = None
) -> None:
    """Write JSON files (and Parquet tables) into a temporary folder, then move it into place whole."""
    with atomic_directory(out_dir) as tmp:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            text = content if isinstance(content, str) else json.dumps(content, indent=4, ensure_ascii=False) + "\n"
            path.write_text(text, encoding="utf-8")
        for rel, table in (tables or {}).items():
            table.reset_index(drop=True).to_parquet(tmp / rel, index=False)


def join_annotations(pairs: pd.DataFrame, modifications: pd.DataFrame) -> pd.DataFrame:
    ok = modifications[modifications["status"] == "ok"][["reference_id", "target_id", "text"]]
    return pairs.merge(ok, on=["reference_id", "target_id"], how="inner")


def with_scores(triplets: pd.DataFrame, scores: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The triplets with their score columns (every annotated pair was scored: a missing one means
    the score file is older than the annotations)."""
    keys = ["reference_id", "target_id"]
    out = triplets.merge(scores[keys + columns], on=keys, how="left", validate="one_to_one")
    missing = out[columns[0]].isna().sum() if columns else 0
    if missing:
        raise ValueError(f"{missing} triplet(s) have no scores: the score file is older than the annotations")
    return out


def _row_scores(row: Any, columns: list[str]) -> dict[str, float]:
    return {c: round(float(getattr(row, c)), 4) for c in columns}


def write_facap(
    triplets: pd.DataFrame, score_columns: list[str], card: dict[str, Any], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """FACap's released layout from its triplets (ids, category, source, text, both captions, scores):
    the FashionIQ-style JSON files (each row with its scores) and ``triplets.parquet``, the same rows
    as one table. Returns the card written."""
    files: dict[str, Any] = {}
    counts = {}
    for category, g in triplets.groupby("category", sort=True):
        files[f"cir_triplets/{category}_train_triplets.json"] = [
            {
                "candidate": _native(r.reference_id),
                "target": _native(r.target_id),
                "captions": [r.text],
                "scores": _row_scores(r, score_columns),
            }
            for r in g.itertuples()
        ]
        captions = dict(zip(g["reference_id"], g["reference_caption"], strict=True))
        captions.update(zip(g["target_id"], g["target_caption"], strict=True))
        files[f"image_captions/{category}_train_captions.json"] = {
            _native(i): captions[i] for i in sorted(captions) if isinstance(captions[i], str)
        }
        counts[str(category)] = {"triplets": int(len(g)), "images": len(captions)}
    card = {**card, "categories": counts, "triplets": int(len(triplets))}
    files["data_card.json"] = dumps_json(card)
    _write_tree(out_dir, files, {RELEASED_TABLE: triplets})
    return card


def read_released(facap_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A released FACap's triplet table and data card."""
    root = Path(facap_dir)
    return pd.read_parquet(root / RELEASED_TABLE), json.loads((root / "data_card.json").read_text())


def assemble_facap(
    pairs: pd.DataFrame,
    captions: pd.DataFrame,
    modifications: pd.DataFrame,
    scores: pd.DataFrame,
    sources: list[str],
    out_dir: str | os.PathLike[str],
    card: dict[str, Any],
    leakage: dict[str, Any],
    leakage_action: str,
) -> dict[str, Any]:
    """``scores``: the triplet_scores rule's table; ``leakage``: the leakage rule's summary;
    ``leakage_action``: report or drop."""
    annotated = join_annotations(pairs[pairs["source"].isin(sources)], modifications)
    triplets, leakage_card = drop_leaked(annotated, leakage, leakage_action)
    ok_captions = captions[captions["status"] == "ok"].set_index("image_id")["text"]
    triplets = triplets.assign(
        reference_caption=triplets["reference_id"].map(ok_captions),
        target_caption=triplets["target_id"].map(ok_captions),
    )
    columns = score_columns(scores)
    triplets = with_scores(triplets, scores, columns)
    dropped = int(pairs["source"].isin(sources).sum() - len(annotated))
    card = {
        **card,
        "pairs_without_an_accepted_modification_text": dropped,
        "leakage": leakage_card,
        "scores": score_card(triplets, columns),
    }
    keep = ["reference_id", "target_id", "source", "category", "text", "reference_caption", "target_caption"]
    return write_facap(triplets[keep + columns], columns, card, out_dir)


def assemble_enhfashioniq(
    pairs: pd.DataFrame,
    modifications: pd.DataFrame,
    scores: pd.DataFrame,
    fashioniq_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    card: dict[str, Any],
) -> dict[str, Any]:
    """One triplet per FashionIQ val image (as reference), captions and image splits in FashionIQ's
    format; each row also carries its scores (FashionIQ's readers ignore the extra key)."""
    columns = score_columns(scores)
    triplets = with_scores(join_annotations(pairs[pairs["source"] == "fashioniq"], modifications), scores, columns)
    files: dict[str, Any] = {}
    counts = {}
    for category in sorted(set(pairs.loc[pairs["source"] == "fashioniq", "category"])):
        g = triplets[triplets["category"] == category]
        files[f"captions/cap.{category}.val.json"] = [
            {
                "target": _native(r.target_id),
                "candidate": _native(r.reference_id),
                "captions": [r.text],
                "scores": _row_scores(r, columns),
            }
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
        "scores": score_card(triplets, columns),
    }
    files["data_card.json"] = dumps_json(card)
    _write_tree(out_dir, files)
    return card
