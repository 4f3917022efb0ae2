"""A user's own catalogue: a CSV or Parquet table, one row per image.

Required columns: ``image_path`` (absolute, or relative to the table's folder), ``category``,
``item_id`` (views of one product share it and are never paired). Optional: ``product_text``,
``attributes`` (a JSON object), ``attr_<name>`` columns (one attribute each), ``split``,
``image_id``, ``view``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from fashionblip2.common.issues import BadInputError, InputReport
from fashionblip2.sources.records import ImageRecord

REQUIRED = ("image_path", "category", "item_id")


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return " ".join(str(value).split())


def check_encoding(path: Path, encoding: str) -> None:
    """A text catalogue that is not in ``encoding`` stops the run naming the first bad line (pandas
    alone names a byte offset, or silently reads mojibake)."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise BadInputError(
                    f"{path}, line {line_number}: not {encoding} text (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); save the catalogue as UTF-8, or set sources.catalogue.encoding"
                ) from e
            except LookupError as e:
                raise BadInputError(f"sources.catalogue.encoding: unknown encoding {encoding!r}") from e


def read_catalogue(
    path: str | os.PathLike[str], report: InputReport, source: str = "catalogue", encoding: str = "utf-8"
) -> list[ImageRecord]:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: catalogue file not found; check sources.catalogue.path")
    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
        first_row = 0  # a Parquet row's "line" is its row number
    elif path.suffix.lower() in (".csv", ".tsv"):
        check_encoding(path, encoding)
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding)
        first_row = 2  # line 1 is the header
    else:
        raise BadInputError(f"{path}: unsupported catalogue format {path.suffix!r}; use .csv, .tsv or .parquet")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise BadInputError(
            f"{path}: catalogue lacks required column(s) {', '.join(missing)}; "
            f"it has {', '.join(map(str, table.columns))}"
        )
    attr_columns = [c for c in table.columns if str(c).startswith("attr_")]
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for i, row in enumerate(table.to_dict("records")):
        line = i + first_row
        values = {c: _text(row.get(c)) for c in REQUIRED}
        empty = [c for c, v in values.items() if not v]
        if empty:
            report.skip(
                source,
                path.name,
                line,
                values["image_path"] or f"row {i}",
                f"row has missing fields: {', '.join(empty)}",
            )
            continue
        image_path = Path(values["image_path"])
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        image_id = _text(row.get("image_id")) or Path(values["image_path"]).with_suffix("").as_posix()
        if image_id in seen:
            report.skip(source, path.name, line, image_id, "duplicate: image id already listed")
            continue
        seen.add(image_id)
        attributes: dict[str, str] = {}
        raw = _text(row.get("attributes"))
        if raw:
            try:
                parsed = json.loads(raw)
                if not isinstance(parsed, dict):
                    raise ValueError("not a JSON object")
                attributes.update({str(k): _text(v) for k, v in parsed.items() if _text(v)})
            except ValueError as e:
                report.repair(source, path.name, line, image_id, f"attributes ignored: not a JSON object ({e})")
        attributes.update({c.removeprefix("attr_"): _text(row[c]) for c in attr_columns if _text(row.get(c))})
        records.append(
            ImageRecord(
                image_id=f"{source}:{image_id}",
                path=str(image_path),
                source=source,
                category=values["category"].lower(),
                source_category=values["category"],
                item_id=values["item_id"],
                view=_text(row.get("view")) or "0",
                split=_text(row.get("split")) or "train",
                product_text=_text(row.get("product_text")),
                attributes=dict(sorted(attributes.items())),
                origin=path.name,
                origin_line=line,
            )
        )
    return records
