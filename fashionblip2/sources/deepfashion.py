"""DeepFashion-MultiModal: ``images/<GENDER>-<Cat>-id_<8 digits>-<nn>_<pose>_<view>.jpg``,
``labels/shape/shape_anno_all.txt``, ``labels/texture/{fabric,pattern}_ann.txt`` and ``captions.json``.

Annotation codes are those of the dataset's README; a line with an undefined code is skipped
(the image is kept, with the attributes of its other files)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from fashionblip2.common.issues import BadInputError, InputReport
from fashionblip2.sources.records import ImageRecord

SOURCE = "deepfashion_mm"
IMAGE_NAME = re.compile(
    r"^(?P<gender>MEN|WOMEN)-(?P<cat>[A-Za-z_]+)-(?P<id>id_\d+)-(?P<shot>\d+)_(?P<pose>\d+)_(?P<view>[a-z]+)$"
)
CATEGORY = {
    "Dresses": "dress",
    "Rompers_Jumpsuits": "dress",
    "Skirts": "skirt",
    "Pants": "pants",
    "Denim": "pants",
    "Shorts": "pants",
    "Leggings": "pants",
    "Jackets_Coats": "jacket",
    "Jackets_Vests": "jacket",
    "Cardigans": "jacket",
    "Suiting": "jacket",
    "Shirts_Polos": "shirt",
    "Blouses_Shirts": "top",
    "Tees_Tanks": "top",
    "Graphic_Tees": "top",
    "Sweaters": "top",
    "Sweatshirts_Hoodies": "top",
}
# The codes of labels/shape/shape_anno_all.txt (12 fields) and labels/texture/*.txt, as the dataset defines them.
SHAPE_FIELDS: tuple[tuple[str, dict[int, str]], ...] = (
    (
        "sleeve_length",
        {0: "sleeveless", 1: "short-sleeve", 2: "medium-sleeve", 3: "long-sleeve", 4: "not long-sleeve", 5: "NA"},
    ),
    ("lower_clothing_length", {0: "three-point", 1: "medium short", 2: "three-quarter", 3: "long", 4: "NA"}),
    ("socks", {0: "no", 1: "socks", 2: "leggings", 3: "NA"}),
    ("hat", {0: "no", 1: "yes", 2: "NA"}),
    ("glasses", {0: "no", 1: "eyeglasses", 2: "sunglasses", 3: "glasses in hand or clothes", 4: "NA"}),
    ("neckwear", {0: "no", 1: "yes", 2: "NA"}),
    ("wrist_wearing", {0: "no", 1: "yes", 2: "NA"}),
    ("ring", {0: "no", 1: "yes", 2: "NA"}),
    ("waist_accessories", {0: "no", 1: "belt", 2: "have a clothing", 3: "hidden", 4: "NA"}),
    ("neckline", {0: "V-shape", 1: "square", 2: "round", 4: "standing", 5: "lapel", 6: "suspenders", 7: "NA"}),
    ("outer_clothing_cardigan", {0: "yes", 1: "no", 2: "NA"}),
    ("upper_clothing_covering_navel", {0: "no", 1: "yes", 2: "NA"}),
)
FABRIC_CODES = {0: "denim", 1: "cotton", 2: "leather", 3: "furry", 4: "knitted", 5: "chiffon", 6: "other", 7: "NA"}
PATTERN_CODES = {
    0: "floral",
    1: "graphic",
    2: "striped",
    3: "pure color",
    4: "lattice",
    5: "other",
    6: "color block",
    7: "NA",
}
TEXTURE_SLOTS = ("upper", "lower", "outer")

SHAPE_FILE = "labels/shape/shape_anno_all.txt"
FABRIC_FILE = "labels/texture/fabric_ann.txt"
PATTERN_FILE = "labels/texture/pattern_ann.txt"
CAPTIONS_FILE = "captions.json"


def _read_codes(
    root: Path, rel_file: str, fields: list[tuple[str, dict[int, str]]], images: set[str], report: InputReport
) -> dict[str, dict[str, str]]:
    """name -> decoded attributes (NA dropped) for one space-separated annotation file."""
    path = root / rel_file
    out: dict[str, dict[str, str]] = {}
    if not path.exists():
        report.skip(SOURCE, rel_file, None, "", "annotation file missing: attributes unavailable")
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, start=1):
            parts = raw.split()
            if not parts:
                continue
            name = parts[0]
            if len(parts) != len(fields) + 1:
                report.skip(
                    SOURCE,
                    rel_file,
                    lineno,
                    name,
                    f"label line has missing fields: {len(parts) - 1} codes, expected {len(fields)}",
                )
                continue
            try:
                codes = [int(v) for v in parts[1:]]
            except ValueError:
                report.skip(SOURCE, rel_file, lineno, name, f"label line has a non-integer code: {' '.join(parts[1:])}")
                continue
            bad = [f"{n}={c}" for (n, table), c in zip(fields, codes, strict=True) if c not in table]
            if bad:
                report.skip(SOURCE, rel_file, lineno, name, f"attribute code out of range: {', '.join(bad)}")
                continue
            if Path(name).stem not in images:
                report.skip(SOURCE, rel_file, lineno, name, "annotation for an image not found in images/")
                continue
            out[name] = {n: table[c] for (n, table), c in zip(fields, codes, strict=True) if table[c] != "NA"}
    return out


def _read_captions(root: Path, images: set[str], report: InputReport) -> dict[str, str]:
    path = root / CAPTIONS_FILE
    if not path.exists():
        report.skip(SOURCE, CAPTIONS_FILE, None, "", "captions file missing: product texts unavailable")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        report.skip(SOURCE, CAPTIONS_FILE, line, "", f"captions file is not valid JSON: {e}")
        return {}
    if not isinstance(data, dict):
        report.skip(SOURCE, CAPTIONS_FILE, None, "", "captions file is not a JSON object of name -> text")
        return {}
    out = {}
    for name, text in data.items():
        if not isinstance(text, str) or not text.strip():
            report.skip(SOURCE, CAPTIONS_FILE, None, name, "caption is empty or not a string")
        elif Path(name).stem not in images:
            report.skip(SOURCE, CAPTIONS_FILE, None, name, "caption for an image not found in images/")
        else:
            out[name] = " ".join(text.split())
    return out


def read_deepfashion(root: str | os.PathLike[str], report: InputReport) -> list[ImageRecord]:
    """One record per image in ``images/``; product text = its caption, attributes = its decoded labels."""
    root = Path(root)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise BadInputError(f"{image_dir}: no DeepFashion-MultiModal images folder; check sources.deepfashion_mm.root")
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    named: list[tuple[Path, re.Match[str]]] = []
    for p in files:
        m = IMAGE_NAME.match(p.stem)
        if m is None:
            report.skip(
                SOURCE,
                f"images/{p.name}",
                None,
                p.name,
                "unrecognised file name: expected <GENDER>-<Category>-id_<n>-<nn>_<pose>_<view>",
            )
            continue
        named.append((p, m))
    stems = {p.stem for p, _ in named}
    shape = _read_codes(root, SHAPE_FILE, list(SHAPE_FIELDS), stems, report)
    texture = [
        _read_codes(root, FABRIC_FILE, [(f"{slot}_fabric", FABRIC_CODES) for slot in TEXTURE_SLOTS], stems, report),
        _read_codes(root, PATTERN_FILE, [(f"{slot}_pattern", PATTERN_CODES) for slot in TEXTURE_SLOTS], stems, report),
    ]
    captions = _read_captions(root, stems, report)
    records = []
    for p, m in named:
        attributes = {**shape.get(p.name, {}), **texture[0].get(p.name, {}), **texture[1].get(p.name, {})}
        records.append(
            ImageRecord(
                image_id=f"{SOURCE}:{p.stem}",
                path=str(p),
                source=SOURCE,
                category=CATEGORY.get(m["cat"], m["cat"].lower()),
                source_category=m["cat"],
                item_id=f"{m['gender']}-{m['cat']}-{m['id']}",
                view=f"{m['shot']}_{m['pose']}_{m['view']}",
                split="all",
                product_text=captions.get(p.name, ""),
                attributes=dict(sorted(attributes.items())),
                origin=f"images/{p.name}",
            )
        )
    return records
