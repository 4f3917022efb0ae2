"""FashionIQ: ``image_splits/split.<cat>.<split>.json`` (lists of ASINs), ``captions/cap.<cat>.<split>.json``
(``[{candidate, target, captions: [c1, c2]}]``) and ``images/<asin>.png``.

Public mirrors of the images miss thousands of files; a missing image is reported and its
triplets skipped, with the counts in the report, never a crash and never a silent drop."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from fashionblip2.common.issues import BadInputError, InputReport
from fashionblip2.sources.records import ImageRecord

SOURCE = "fashioniq"
CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FILE = "image_splits/split.{category}.{split}.json"
CAPTION_FILE = "captions/cap.{category}.{split}.json"
TRIPLET_COLUMNS = ["category", "split", "candidate", "target", "captions", "file", "index", "line"]


def json_array_with_lines(text: str) -> list[tuple[int, Any]]:
    """Decode a JSON array into (line where the element starts, element) pairs.

    ``json`` gives no positions, so the array is decoded element by element; the line numbers let
    a report point at the exact entry of a 30,000-line FashionIQ file.
    """
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        json.loads(text)  # raises JSONDecodeError for malformed text
        raise TypeError("not a JSON array")
    pos = ws.match(text, pos + 1).end()
    out: list[tuple[int, Any]] = []
    if text.startswith("]", pos):
        return out
    while True:
        element, end = decoder.raw_decode(text, pos)
        out.append((text.count("\n", 0, pos) + 1, element))
        pos = ws.match(text, end).end()
        if text.startswith("]", pos):
            if text[ws.match(text, pos + 1).end() :]:
                raise json.JSONDecodeError("Extra data", text, pos + 1)
            return out
        if not text.startswith(",", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = ws.match(text, pos + 1).end()


def _json_lists(
    root: Path, pattern: str, categories: Iterable[str], splits: Iterable[str], report: InputReport
) -> Iterator[tuple[str, str, str, list]]:
    """(category, split, relative file, [(line, entry)]) for each ``pattern`` file that holds a JSON list."""
    for category in categories:
        for split in splits:
            rel = pattern.format(category=category, split=split)
            path = root / rel
            if not path.exists():
                report.skip(SOURCE, rel, None, "", "file missing")
                continue
            try:
                data = json_array_with_lines(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                report.skip(SOURCE, rel, getattr(e, "lineno", None), "", f"file is not valid JSON: {e}")
                continue
            except TypeError:
                report.skip(SOURCE, rel, None, "", "file is not a JSON list")
                continue
            yield category, split, rel, data


def image_key(category: str, asin: str) -> str:
    """The manifest id of a FashionIQ image listed under ``category``."""
    return f"{SOURCE}:{category}:{asin}"


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
    for category, split, rel, names in _json_lists(root, SPLIT_FILE, categories, splits, report):
        for line, asin in names:
            if not isinstance(asin, str) or not asin.strip():
                report.skip(SOURCE, rel, line, repr(asin)[:40], "entry is not an image name")
                continue
            if (category, asin) in seen:
                report.skip(SOURCE, rel, line, asin, f"duplicate: image already listed in {seen[category, asin]}")
                continue
            seen[category, asin] = rel
            records.append(
                ImageRecord(
                    image_id=image_key(category, asin),
                    path=str(image_path(root, asin)),
                    source=SOURCE,
                    category=category,
                    source_category=category,
                    item_id=asin,
                    view="0",
                    split=split,
                    origin=rel,
                    origin_line=line,
                )
            )
    return records


def read_fashioniq_triplets(
    root: str | os.PathLike[str],
    report: InputReport,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    splits: tuple[str, ...] | list[str] = ("train", "val"),
) -> pd.DataFrame:
    """Triplets of the caption files as a table (category, split, candidate, target, captions, file, index, line).

    An entry without ``target`` or ``candidate`` or with no caption text is skipped and counted.
    The public test split has no targets, so it is not read by default.
    """
    root = Path(root)
    rows = []
    for category, split, rel, entries in _json_lists(root, CAPTION_FILE, categories, splits, report):
        for index, (line, entry) in enumerate(entries):
            if not isinstance(entry, dict):
                report.skip(SOURCE, rel, line, f"entry {index}", "entry is not a JSON object")
                continue
            where = f"entry {index} ({entry.get('candidate', '?')})"
            missing = [k for k in ("candidate", "target") if not isinstance(entry.get(k), str) or not entry[k]]
            if missing:
                report.skip(SOURCE, rel, line, where, f"entry without {' and '.join(missing)}")
                continue
            captions = entry.get("captions")
            if not isinstance(captions, list) or not any(isinstance(c, str) and c.strip() for c in captions):
                report.skip(SOURCE, rel, line, where, "entry without captions")
                continue
            texts = [c for c in captions if isinstance(c, str)]
            rows.append((category, split, entry["candidate"], entry["target"], texts, rel, index, line))
    return pd.DataFrame(rows, columns=TRIPLET_COLUMNS)


def check_triplet_images(triplets: pd.DataFrame, available: set[str], report: InputReport) -> pd.DataFrame:
    """Keep the triplets whose candidate and target images are both in ``available`` (ASINs).

    Each missing image is reported once per caption file, at the first line that uses it, with the
    number of triplets it removed.
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
                dropped.loc[~has_candidate[~keep], ["candidate", "file", "line"]].set_axis(
                    ["asin", "file", "line"], axis=1
                ),
                dropped.loc[~has_target[~keep], ["target", "file", "line"]].set_axis(["asin", "file", "line"], axis=1),
            ]
        )
        per_image = missing.groupby(["asin", "file"], sort=True)["line"].agg(["min", "size"])
        for (asin, file), first_line, n in per_image.itertuples():
            report.skip(SOURCE, file, int(first_line), asin, f"triplet image missing: {n} triplet(s) skipped")
    return triplets[keep].reset_index(drop=True)
