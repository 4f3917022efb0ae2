"""The image manifest: one table of every image of every configured source.

Columns: image_id, path, source, category, source_category, item_id, view, split, product_text,
attributes (a JSON object), width, height, mode. Every later stage reads images through it.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from fashionblip2.common.images import check_image
from fashionblip2.common.issues import BadInputError, InputReport
from fashionblip2.sources import (
    check_triplet_images,
    read_catalogue,
    read_deepfashion,
    read_fashion200k,
    read_fashioniq_images,
    read_fashioniq_triplets,
)
from fashionblip2.sources.fashioniq import TRIPLET_COLUMNS
from fashionblip2.sources.records import MANIFEST_COLUMNS, ImageRecord

SOURCE_KINDS = ("fashion200k", "deepfashion_mm", "fashioniq", "catalogue")


@dataclass
class ManifestResult:
    images: pd.DataFrame
    triplets: pd.DataFrame
    report: InputReport
    read: dict[str, int] = field(default_factory=dict)


def _check(args: tuple[str, str]) -> tuple[int | None, int | None, str | None, str | None]:
    c = check_image(args[0], args[1])
    return c.width, c.height, c.mode, c.problem


def check_images(
    records: list[ImageRecord], report: InputReport, *, verify: str = "decode", workers: int = 1, progress: bool = True
) -> list[tuple[ImageRecord, int | None, int | None, str | None]]:
    """Check every record's image; keep the usable ones with their size and mode.

    A missing, empty, truncated or unreadable image is skipped and counted (with the file and
    line that listed it); an image that is not RGB is kept and recorded as converted on load.
    """
    jobs = [(r.path, verify) for r in records]
    bar = dict(total=len(jobs), desc=f"checking images ({verify})", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 2000:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(_check, jobs, chunksize=256), **bar))
    else:
        results = [_check(j) for j in tqdm(jobs, **bar)]
    kept = []
    for record, (width, height, mode, problem) in zip(records, results, strict=True):
        if problem is not None:
            report.skip(record.source, record.origin, record.origin_line, record.image_id, f"{problem}: {record.path}")
            continue
        if mode is not None and mode != "RGB":
            report.repair(
                record.source,
                record.origin,
                record.origin_line,
                record.image_id,
                f"non-RGB image ({mode}): converted to RGB on load",
            )
        kept.append((record, width, height, mode))
    return kept


def read_sources(sources: dict[str, dict[str, Any]], report: InputReport) -> tuple[list[ImageRecord], pd.DataFrame]:
    """Run the reader of every enabled source. ``sources`` is the config's ``sources`` section with resolved roots."""
    unknown = sorted(set(sources) - set(SOURCE_KINDS))
    if unknown:
        raise BadInputError(f"unknown source(s) {', '.join(unknown)}; expected some of {', '.join(SOURCE_KINDS)}")
    records: list[ImageRecord] = []
    triplets = pd.DataFrame(columns=TRIPLET_COLUMNS)
    for name in SOURCE_KINDS:
        spec = sources.get(name)
        if not spec or not spec["enabled"]:
            continue
        if name == "fashion200k":
            records += read_fashion200k(spec["root"], report)
        elif name == "deepfashion_mm":
            records += read_deepfashion(spec["root"], report)
        elif name == "fashioniq":
            categories = spec["categories"]
            records += read_fashioniq_images(spec["root"], report, categories, spec["splits"])
            triplets = read_fashioniq_triplets(spec["root"], report, categories, spec["triplet_splits"])
        else:
            records += read_catalogue(spec["path"], report, source=spec["name"], encoding=spec["encoding"])
    return records, triplets


def build_manifest(
    sources: dict[str, dict[str, Any]],
    *,
    verify: str = "decode",
    strict: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> ManifestResult:
    report = InputReport(strict=strict)
    records, triplets = read_sources(sources, report)
    read_counts = pd.Series([r.source for r in records], dtype=str).value_counts().sort_index().to_dict()
    kept = check_images(records, report, verify=verify, workers=workers, progress=progress)
    rows = [
        {
            "image_id": r.image_id,
            "path": r.path,
            "source": r.source,
            "category": r.category,
            "source_category": r.source_category,
            "item_id": r.item_id,
            "view": r.view,
            "split": r.split,
            "product_text": r.product_text,
            "attributes": json.dumps(r.attributes, sort_keys=True, ensure_ascii=False),
            "width": w,
            "height": h,
            "mode": m,
        }
        for r, w, h, m in kept
    ]
    images = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"width": "Int64", "height": "Int64"})
    images = images.sort_values("image_id", kind="stable").reset_index(drop=True)
    present = {Path(p).stem for p in images.loc[images["source"] == "fashioniq", "path"]}
    triplets = check_triplet_images(triplets, present, report)
    return ManifestResult(
        images=images, triplets=triplets, report=report, read={k: int(v) for k, v in read_counts.items()}
    )


def manifest_summary(result: ManifestResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the report JSON says: images read and kept per source, triplets, and issue counts."""
    kept = result.images.groupby("source").size().to_dict()
    return {
        "images_read": result.read,
        "images_kept": {k: int(v) for k, v in sorted(kept.items())},
        "fashioniq_triplets_kept": (
            {f"{c}.{s}": int(n) for (c, s), n in result.triplets.groupby(["category", "split"]).size().items()}
            if not result.triplets.empty
            else {}
        ),
        "skipped": result.report.count("skipped"),
        "repaired": result.report.count("repaired"),
        "issues_by_source": result.report.summary(),
        **(extra or {}),
    }


def manifest_paths(manifest: pd.DataFrame) -> dict[str, str]:
    """Image id -> file path."""
    return dict(zip(manifest["image_id"], manifest["path"], strict=True))


def select_for_pairing(images: pd.DataFrame, sources: list[str], fashioniq_splits: list[str]) -> pd.DataFrame:
    """The manifest rows that are embedded and paired: the listed sources; FashionIQ only in the given splits.

    FashionIQ lists a few images under two categories; the rows stay (each category's pairing
    needs them), but they share one image file.
    """
    keep = images["source"].isin(sources)
    keep &= (images["source"] != "fashioniq") | images["split"].isin(fashioniq_splits)
    return images[keep].reset_index(drop=True)


def fashioniq_val_images(manifest: pd.DataFrame, categories: list[str]) -> int:
    """FashionIQ val's images of ``categories``: what a training run's validation encodes as gallery."""
    val = (manifest["source"] == "fashioniq") & (manifest["split"] == "val") & manifest["category"].isin(categories)
    return int(val.sum())


def count_for_pairing(manifest: str | os.PathLike[str], sources: list[str], fashioniq_splits: list[str]) -> int:
    """How many manifest images :func:`select_for_pairing` chooses (reads two columns only)."""
    return len(select_for_pairing(pd.read_parquet(manifest, columns=["source", "split"]), sources, fashioniq_splits))
