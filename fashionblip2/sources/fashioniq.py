"""FashionIQ: ``image_splits/split.<cat>.<split>.json`` (lists of ASINs), ``captions/cap.<cat>.<split>.json``
(``[{candidate, target, captions: [c1, c2]}]``) and ``images/<asin>.png``.

Public mirrors of the images miss thousands of files; a missing image is reported and its
triplets skipped, with the counts in the report, never a crash and never a silent drop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from fashionblip2.report import BadInputError, InputReport
from fashionblip2.sources.records import ImageRecord

SOURCE = "fashioniq"
CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TRIPLET_COLUMNS = ["category", "split", "candidate", "target", "captions", "file", "index"]


def _load_json_list(path: Path, rel: str, report: InputReport) -> list | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.skip(SOURCE, rel, getattr(e, "lineno", None), "", f"file is not valid JSON: {e}")
        return None
    if not isinstance(data, list):
        report.skip(SOURCE, rel, None, "", "file is not a JSON list")
        return None
    return data


def image_path(root: str | os.PathLike[str], asin: str) -> Path:
    """Where the image of ``asin`` is: ``images/<asin>.png``, or .jpg / .jpeg in mirrors that re-encoded them."""
    base = Path(root) / "images"
    for suffix in IMAGE_SUFFIXES:
        p = base / f"{asin}{suffix}"
        if p.exists():
            return p
    return base / f"{asin}.png"


def read_fashioniq_images(
    root: str | os.PathLike[str],
    report: InputReport,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    splits: tuple[str, ...] | list[str] = SPLITS,
) -> list[ImageRecord]:
    """One record per (category, image) of the split files.

    FashionIQ lists some images under two categories (121 in the real val splits); each category's
    gallery needs them, so each listing is its own record, ``fashioniq:<category>:<asin>``. Whether
    the image file exists is checked later, by the manifest builder, with the other image checks.
    """
    root = Path(root)
    split_dir = root / "image_splits"
    if not split_dir.is_dir():
        raise BadInputError(f"{split_dir}: no FashionIQ image_splits folder; check sources.fashioniq.root")
    records: list[ImageRecord] = []
    seen: dict[tuple[str, str], str] = {}
    for category in categories:
        for split in splits:
            rel = f"image_splits/split.{category}.{split}.json"
            path = root / rel
            if not path.exists():
                report.skip(SOURCE, rel, None, "", "split file missing")
                continue
            names = _load_json_list(path, rel, report)
            for index, asin in enumerate(names or []):
                if not isinstance(asin, str) or not asin.strip():
                    report.skip(SOURCE, rel, None, repr(asin)[:40], f"entry {index} is not an image name")
                    continue
                if (category, asin) in seen:
                    report.skip(SOURCE, rel, None, asin, f"duplicate: image already listed in {seen[category, asin]}")
                    continue
                seen[category, asin] = rel
                records.append(
                    ImageRecord(
                        image_id=f"{SOURCE}:{category}:{asin}",
                        path=str(image_path(root, asin)),
                        source=SOURCE,
                        category=category,
                        source_category=category,
                        item_id=asin,
                        view="0",
                        split=split,
                        origin=rel,
                        origin_line=None,
                    )
                )
    return records


def read_fashioniq_triplets(
    root: str | os.PathLike[str],
    report: InputReport,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    splits: tuple[str, ...] | list[str] = ("train", "val"),
) -> pd.DataFrame:
    """Triplets of the caption files as a table (category, split, candidate, target, captions, file, index).

    An entry without ``target`` or ``candidate`` or with no caption text is skipped and counted.
    The public test split has no targets, so it is not read by default.
    """
    root = Path(root)
    rows = []
    for category in categories:
        for split in splits:
            rel = f"captions/cap.{category}.{split}.json"
            path = root / rel
            if not path.exists():
                report.skip(SOURCE, rel, None, "", "caption file missing")
                continue
            for index, entry in enumerate(_load_json_list(path, rel, report) or []):
                where = f"entry {index}"
                if not isinstance(entry, dict):
                    report.skip(SOURCE, rel, None, where, "entry is not a JSON object")
                    continue
                missing = [k for k in ("candidate", "target") if not isinstance(entry.get(k), str) or not entry[k]]
                if missing:
                    report.skip(
                        SOURCE,
                        rel,
                        None,
                        f"{where} ({entry.get('candidate', '?')})",
                        f"entry without {' and '.join(missing)}",
                    )
                    continue
                captions = entry.get("captions")
                if not isinstance(captions, list) or not any(isinstance(c, str) and c.strip() for c in captions):
                    report.skip(SOURCE, rel, None, f"{where} ({entry['candidate']})", "entry without captions")
                    continue
                rows.append(
                    (
                        category,
                        split,
                        entry["candidate"],
                        entry["target"],
                        [c for c in captions if isinstance(c, str)],
                        rel,
                        index,
                    )
                )
    return pd.DataFrame(rows, columns=TRIPLET_COLUMNS)


def check_triplet_images(triplets: pd.DataFrame, available: set[str], report: InputReport) -> pd.DataFrame:
    """Keep the triplets whose candidate and target images are both in ``available`` (ASINs).

    Each missing image is reported once, with the number of triplets it removed.
    """
    if triplets.empty:
        return triplets
    has_candidate = triplets["candidate"].isin(available)
    has_target = triplets["target"].isin(available)
    keep = has_candidate & has_target
    dropped = triplets[~keep]
    if not dropped.empty:
        missing = pd.concat(
            [
                dropped.loc[~has_candidate[~keep], ["candidate", "file"]].set_axis(["asin", "file"], axis=1),
                dropped.loc[~has_target[~keep], ["target", "file"]].set_axis(["asin", "file"], axis=1),
            ]
        )
        for (asin, file), n in missing.groupby(["asin", "file"], sort=True).size().items():
            report.skip(SOURCE, file, None, asin, f"triplet image missing: {n} triplet(s) skipped")
    return triplets[keep].reset_index(drop=True)
