"""Fashion200k: ``labels/<cat>_{train,test}_detect_all.txt`` lines of ``path \\t score \\t description``,
images under ``women/<cat>/<subcat>/<item>/<item>_<view>.jpeg``."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from fashionblip2.common.issues import BadInputError, InputReport
from fashionblip2.sources.records import ImageRecord

SOURCE = "fashion200k"
LABEL_FILE = re.compile(r"^(?P<category>[a-z]+)_(?P<split>train|test)_detect_all\.txt$")


def read_fashion200k(root: str | os.PathLike[str], report: InputReport) -> list[ImageRecord]:
    """All images listed in the label files under ``root``, one record each.

    A line with missing fields or an empty description is skipped and counted; an image listed
    twice keeps its first line. The category is the label file's (dress, jacket, pants, skirt, top).
    """
    root = Path(root)
    labels = root / "labels"
    files = sorted(p for p in labels.glob("*_detect_all.txt") if LABEL_FILE.match(p.name)) if labels.is_dir() else []
    if not files:
        raise BadInputError(
            f"{labels}: no Fashion200k label files (<cat>_train_detect_all.txt); check sources.fashion200k.root"
        )
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for label_file in files:
        m = LABEL_FILE.match(label_file.name)
        assert m is not None
        category, split = m["category"], m["split"]
        rel_file = f"labels/{label_file.name}"
        with open(label_file, encoding="utf-8", errors="replace") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 3 or not fields[0].strip() or not fields[2].strip():
                    report.skip(
                        SOURCE,
                        rel_file,
                        lineno,
                        fields[0][:80],
                        f"label line has missing fields: {len(fields)} of 3 (path, score, description)",
                    )
                    continue
                rel_path = fields[0].strip()
                description = " ".join(fields[2].split())
                p = PurePosixPath(rel_path)
                stem = p.stem
                if stem in seen:
                    report.skip(SOURCE, rel_file, lineno, rel_path, "duplicate: image already listed")
                    continue
                seen.add(stem)
                item = p.parent.name or stem.rsplit("_", 1)[0]
                view = stem.rsplit("_", 1)[1] if "_" in stem else "0"
                records.append(
                    ImageRecord(
                        image_id=f"{SOURCE}:{stem}",
                        path=str(root / rel_path),
                        source=SOURCE,
                        category=category,
                        source_category=p.parts[1] if len(p.parts) > 2 else category,
                        item_id=item,
                        view=view,
                        split=split,
                        product_text=description,
                        origin=rel_file,
                        origin_line=lineno,
                    )
                )
    return records
