"""Generate the synthetic fashion world in the formats of Fashion200k, DeepFashion-MultiModal and FashionIQ.

Layout written under ``out_dir`` (the real datasets' own layouts):

    fashion200k/women/<cat>/<subcat>/<item>/<item>_<view>.jpeg
    fashion200k/labels/<cat>_{train,test}_detect_all.txt          path \\t score \\t description
    deepfashion_mm/images/<GENDER>-<Cat>-id_<8 digits>-01_<pose>_<view>.jpg
    deepfashion_mm/labels/shape/shape_anno_all.txt                 name + 12 shape codes
    deepfashion_mm/labels/texture/{fabric,pattern}_ann.txt         name + upper, lower, outer codes
    deepfashion_mm/captions.json                                   name -> description
    fashioniq/images/<asin>.png
    fashioniq/captions/cap.<cat>.<split>.json                      [{candidate, target, captions: [2]}]
    fashioniq/image_splits/split.<cat>.<split>.json                [asin, ...]
    world.json                                                     seed, sizes, counts

Planted leaks: ``planted_leaks`` FashionIQ val images are copied into Fashion200k as items of their
own (a web shop selling the same product photo), each resized, cropped, re-encoded or slightly
recoloured (in turn), so that the leakage check has known copies to find.

The ground truth (true attributes of every image; for a planted copy, the FashionIQ image it was
copied from and how it was changed) goes to a separate sidecar table that only evaluation code
reads. The same spec gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import os
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from fashionblip2.common.io import atomic_directory, dumps_json, write_parquet_atomic
from fashionblip2.synthetic.attributes import Garment, mutate_garment, pick, sample_garment, stable_rng
from fashionblip2.synthetic.render import View, render_garment
from fashionblip2.synthetic.texts import (
    Noise,
    deepfashion_caption,
    deepfashion_labels,
    product_description,
    relative_caption,
)

GENERATOR_VERSION = 2  # 2: planted leaks
WORLD_MARKER = "world.json"

# Fashion200k: label-file stem -> (image folder, garments that appear in it).
F200K_CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dress": ("dresses", ("dress",)),
    "jacket": ("jackets", ("jacket",)),
    "pants": ("pants", ("pants",)),
    "skirt": ("skirts", ("skirt",)),
    "top": ("tops", ("top", "shirt", "toptee")),
}
FIQ_CATEGORIES: dict[str, tuple[str, ...]] = {"dress": ("dress",), "shirt": ("shirt",), "toptee": ("toptee", "top")}
FIQ_SPLITS = ("train", "val", "test")
DF_POSES = ((1, "front"), (2, "side"), (3, "back"), (4, "full"), (7, "additional"))


@dataclass(frozen=True)
class Fashion200kSpec:
    items_per_category: int
    min_views: int
    max_views: int
    test_fraction: float


@dataclass(frozen=True)
class DeepFashionSpec:
    items: int
    min_views: int
    max_views: int
    missing_caption: float
    missing_shape: float


@dataclass(frozen=True)
class FashionIQSpec:
    images: dict[str, int]
    triplets: dict[str, int]
    # Public FashionIQ mirrors miss images; this share of listed images is not written.
    missing_images: float


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and noise of the synthetic world: the ``synthetic`` section of the config, every key of
    it (config.yaml holds the defaults)."""

    seed: int
    image_size: int
    similar_fraction: float
    fashion200k: Fashion200kSpec
    deepfashion_mm: DeepFashionSpec
    fashioniq: FashionIQSpec
    noise: Noise
    # FashionIQ val images copied into Fashion200k (transformed), for the leakage check to find.
    planted_leaks: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldSpec:
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            _unknown({k: d[k] for k in set(d) - known})
        if known - set(d):
            raise ValueError(f"the synthetic world spec misses {sorted(known - set(d))} (config.yaml has them)")
        return cls(
            seed=int(d["seed"]),
            image_size=int(d["image_size"]),
            similar_fraction=float(d["similar_fraction"]),
            fashion200k=Fashion200kSpec(**d["fashion200k"]),
            deepfashion_mm=DeepFashionSpec(**d["deepfashion_mm"]),
            fashioniq=FashionIQSpec(**d["fashioniq"]),
            noise=Noise(**d["noise"]),
            planted_leaks=int(d["planted_leaks"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unknown(d: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"unknown keys in the synthetic world spec: {sorted(d)}")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=90, optimize=False, progressive=False)
    else:
        img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _garment_pool(rng: np.random.Generator, n: int, garments: tuple[str, ...], similar: float) -> list[Garment]:
    """``n`` garments where a share are near-copies of earlier ones, as in a real catalogue."""
    pool: list[Garment] = []
    for _ in range(n):
        same_kind = [g for g in pool if g.garment in garments]
        if same_kind and rng.random() < similar:
            base = same_kind[int(rng.integers(len(same_kind)))]
            pool.append(mutate_garment(rng, base, int(rng.integers(1, 4))))
        else:
            pool.append(sample_garment(rng, pick(rng, garments)))
    return pool


def _unique_ids(rng: np.random.Generator, n: int, make) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        candidate = make(rng)
        if candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return out


class _Writer:
    """Writes files of the world and collects the ground truth of each image."""

    def __init__(self, root: Path, size: int, progress: tqdm):
        self.root = root
        self.size = size
        self.truth: list[dict[str, Any]] = []
        self.progress = progress

    def image(
        self,
        relpath: str,
        g: Garment,
        view: View,
        rng: np.random.Generator,
        *,
        worn: bool,
        fmt: str,
        source: str,
        native_id: str,
        item_id: str,
        view_index: int,
    ) -> None:
        img = render_garment(g, view, self.size, rng, worn=worn)
        self.bytes(relpath, _encode(img, fmt))
        self.truth.append(
            {
                "source": source,
                "native_id": native_id,
                "item_id": item_id,
                "view": view_index,
                "path": relpath,
                **g.as_dict(),
                "view_params": json.dumps(asdict(view), sort_keys=True),
                "planted_from": "",
                "planted_transform": "",
            }
        )
        self.progress.update(1)

    def bytes(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def text(self, relpath: str, text: str) -> None:
        self.bytes(relpath, text.encode("utf-8"))


def _fashion200k_subcategory(g: Garment) -> str:
    if g.garment == "dress":
        return {"maxi": "maxi_dresses", "mini": "cocktail_dresses"}.get(g.length, "casual_and_day_dresses")
    if g.garment == "jacket":
        return {"leather": "leather_jackets", "denim": "denim_jackets"}.get(g.fabric, "blazers")
    if g.garment == "pants":
        if g.length == "shorts":
            return "shorts"
        return (
            "jeans"
            if g.fabric == "denim"
            else {"loose": "wide-leg_pants", "slim": "skinny_pants"}.get(g.fit, "casual_pants")
        )
    if g.garment == "skirt":
        return f"{g.length}_skirts"
    return {"shirt": "shirts", "toptee": "tees"}.get(g.garment, "tank_tops" if g.sleeve == "sleeveless" else "blouses")


def _write_fashion200k(w: _Writer, spec: WorldSpec) -> dict[str, dict[str, list[str]]]:
    """Writes the images; returns the label files' lines (stem -> split -> lines), written once the
    planted copies have joined them."""
    s = spec.fashion200k
    labels: dict[str, dict[str, list[str]]] = {}
    ids = _unique_ids(
        stable_rng(spec.seed, "f200k-ids"),
        s.items_per_category * len(F200K_CATEGORIES),
        lambda r: str(int(r.integers(10_000_000, 99_999_999))),
    )
    for c, (stem, (folder, garments)) in enumerate(F200K_CATEGORIES.items()):
        pool = _garment_pool(
            stable_rng(spec.seed, "f200k-pool", stem), s.items_per_category, garments, spec.similar_fraction
        )
        lines: dict[str, list[str]] = {"train": [], "test": []}
        for k, g in enumerate(pool):
            item = ids[c * s.items_per_category + k]
            rng = stable_rng(spec.seed, "f200k-item", item)
            split = "test" if rng.random() < s.test_fraction else "train"
            description = product_description(rng, g, spec.noise)
            n_views = int(rng.integers(s.min_views, s.max_views + 1))
            for v in range(n_views):
                rel = f"women/{folder}/{_fashion200k_subcategory(g)}/{item}/{item}_{v}.jpeg"
                w.image(
                    f"fashion200k/{rel}",
                    g,
                    View.sample(rng, v),
                    rng,
                    worn=False,
                    fmt="JPEG",
                    source="fashion200k",
                    native_id=f"{item}_{v}",
                    item_id=item,
                    view_index=v,
                )
                lines[split].append(f"{rel}\t{rng.uniform(0.5, 1.0):.6f}\t{description}")
        labels[stem] = lines
    return labels


def _write_labels(w: _Writer, labels: dict[str, dict[str, list[str]]]) -> None:
    for stem, lines in labels.items():
        for split, rows in lines.items():
            w.text(f"fashion200k/labels/{stem}_{split}_detect_all.txt", "".join(r + "\n" for r in rows))


def _deepfashion_folder(g: Garment, gender: str) -> str:
    if g.garment == "pants":
        return "Shorts" if g.length == "shorts" else ("Denim" if g.fabric == "denim" else "Pants")
    if g.garment == "shirt":
        return "Shirts_Polos" if gender == "MEN" else "Blouses_Shirts"
    return {
        "dress": "Dresses",
        "skirt": "Skirts",
        "jacket": "Jackets_Coats",
        "top": "Blouses_Shirts",
        "toptee": "Tees_Tanks",
    }[g.garment]


def _write_deepfashion(w: _Writer, spec: WorldSpec) -> None:
    s = spec.deepfashion_mm
    garments = ("dress", "skirt", "pants", "jacket", "top", "shirt", "toptee")
    pool = _garment_pool(stable_rng(spec.seed, "dfmm-pool"), s.items, garments, spec.similar_fraction)
    ids = _unique_ids(stable_rng(spec.seed, "dfmm-ids"), s.items, lambda r: f"{int(r.integers(1, 99_999_999)):08d}")
    shape_lines, fabric_lines, pattern_lines = [], [], []
    captions: dict[str, str] = {}
    for k, g in enumerate(pool):
        rng = stable_rng(spec.seed, "dfmm-item", ids[k])
        gender = "WOMEN" if g.garment in ("dress", "skirt") or rng.random() < 0.7 else "MEN"
        item = f"{gender}-{_deepfashion_folder(g, gender)}-id_{ids[k]}"
        n_views = int(rng.integers(s.min_views, s.max_views + 1))
        shape, fabric, pattern = deepfashion_labels(rng, g)  # one photo shoot: the same outfit in every view
        for v, (pose, view_name) in enumerate(DF_POSES[:n_views]):
            name = f"{item}-01_{pose}_{view_name}.jpg"
            w.image(
                f"deepfashion_mm/images/{name}",
                g,
                View.sample(rng, v),
                rng,
                worn=True,
                fmt="JPEG",
                source="deepfashion_mm",
                native_id=name.removesuffix(".jpg"),
                item_id=item,
                view_index=v,
            )
            if rng.random() >= s.missing_shape:
                shape_lines.append(" ".join([name, *map(str, shape)]))
            fabric_lines.append(" ".join([name, *map(str, fabric)]))
            pattern_lines.append(" ".join([name, *map(str, pattern)]))
            if rng.random() >= s.missing_caption:
                captions[name] = deepfashion_caption(rng, g, gender, spec.noise)
    w.text("deepfashion_mm/labels/shape/shape_anno_all.txt", "".join(x + "\n" for x in shape_lines))
    w.text("deepfashion_mm/labels/texture/fabric_ann.txt", "".join(x + "\n" for x in fabric_lines))
    w.text("deepfashion_mm/labels/texture/pattern_ann.txt", "".join(x + "\n" for x in pattern_lines))
    w.text("deepfashion_mm/captions.json", json.dumps(captions, indent=4, ensure_ascii=False) + "\n")


def _asin(rng: np.random.Generator) -> str:
    alphabet = string.digits + string.ascii_uppercase
    return "B00" + "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=7))


def _write_fashioniq(w: _Writer, spec: WorldSpec) -> list[tuple[str, str, Garment]]:
    """Writes FashionIQ; returns the val images written, as (category, asin, garment)."""
    s = spec.fashioniq
    val_images: list[tuple[str, str, Garment]] = []
    total = sum(s.images.get(split, 0) for split in FIQ_SPLITS) * len(FIQ_CATEGORIES)
    asins = iter(_unique_ids(stable_rng(spec.seed, "fiq-ids"), total, _asin))
    for cat, garments in FIQ_CATEGORIES.items():
        for split in FIQ_SPLITS:
            n_images = s.images.get(split, 0)
            rng = stable_rng(spec.seed, "fiq", cat, split)
            pool = _garment_pool(rng, n_images, garments, spec.similar_fraction)
            names = [next(asins) for _ in pool]
            for asin, g in zip(names, pool, strict=True):
                if stable_rng(spec.seed, "fiq-missing", asin).random() < s.missing_images:
                    w.progress.update(1)
                    continue
                w.image(
                    f"fashioniq/images/{asin}.png",
                    g,
                    View(),
                    stable_rng(spec.seed, "fiq-img", asin),
                    worn=False,
                    fmt="PNG",
                    source="fashioniq",
                    native_id=asin,
                    item_id=asin,
                    view_index=0,
                )
                if split == "val":
                    val_images.append((cat, asin, g))
            w.text(f"fashioniq/image_splits/split.{cat}.{split}.json", json.dumps(names, indent=4) + "\n")
            rows = []
            for _ in range(s.triplets.get(split, 0) if n_images >= 2 else 0):
                c = int(rng.integers(n_images))
                close = [j for j in range(n_images) if j != c and 1 <= len(pool[c].differences(pool[j])) <= 3]
                t = (
                    close[int(rng.integers(len(close)))]
                    if close
                    else int((c + 1 + rng.integers(n_images - 1)) % n_images)
                )
                captions = [relative_caption(rng, pool[c], pool[t], spec.noise) for _ in range(2)]
                # The public test split hides its targets; the synthetic one mirrors that.
                row = (
                    {"candidate": names[c], "captions": captions}
                    if split == "test"
                    else {"target": names[t], "candidate": names[c], "captions": captions}
                )
                rows.append(row)
            w.text(f"fashioniq/captions/cap.{cat}.{split}.json", json.dumps(rows, indent=4) + "\n")
    return val_images


# How a planted copy differs from its FashionIQ original, in turn (every copy is also re-encoded:
# FashionIQ's images are PNG, Fashion200k's JPEG).
LEAK_TRANSFORMS = ("resize", "crop", "reencode", "recolour")
# FashionIQ category -> the Fashion200k label file its copy is listed in.
LEAK_CATEGORY = {"dress": "dress", "shirt": "top", "toptee": "top"}


def leak_copy(img: Image.Image, transform: str, rng: np.random.Generator) -> bytes:
    """A planted copy's JPEG bytes: resized (to 60-80 %), cropped (4-8 % off each side, back to
    size), re-encoded at a low JPEG quality, or slightly recoloured (each channel scaled by 0.9-1.1)."""
    img = img.convert("RGB")
    w, h = img.size
    quality = 90
    if transform == "resize":
        f = rng.uniform(0.6, 0.8)
        img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BICUBIC)
    elif transform == "crop":
        dx, dy = (max(1, round(v * rng.uniform(0.04, 0.08))) for v in (w, h))
        img = img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)
    elif transform == "reencode":
        quality = int(rng.integers(40, 61))
    elif transform == "recolour":
        scale = rng.uniform(0.9, 1.1, size=3)
        pixels = np.asarray(img, dtype=np.float64) * scale
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    else:
        raise ValueError(f"unknown leak transform {transform!r}; expected one of {LEAK_TRANSFORMS}")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def _plant_leaks(
    w: _Writer, spec: WorldSpec, val_images: list[tuple[str, str, Garment]], labels: dict[str, dict[str, list[str]]]
) -> None:
    """Copy ``spec.planted_leaks`` FashionIQ val images into Fashion200k, each an item of its own."""
    if spec.planted_leaks > len(val_images):
        raise ValueError(
            f"synthetic.planted_leaks is {spec.planted_leaks} but the world has {len(val_images)} FashionIQ val images"
        )
    rng = stable_rng(spec.seed, "leaks")
    chosen = sorted(rng.choice(len(val_images), size=spec.planted_leaks, replace=False).tolist())
    # Nine digits: never one of the eight-digit ids of the world's own Fashion200k items.
    ids = _unique_ids(
        stable_rng(spec.seed, "leak-ids"), len(chosen), lambda r: str(int(r.integers(100_000_000, 999_999_999)))
    )
    for k, (pos, item) in enumerate(zip(chosen, ids, strict=True)):
        cat, asin, g = val_images[pos]
        transform = LEAK_TRANSFORMS[k % len(LEAK_TRANSFORMS)]
        item_rng = stable_rng(spec.seed, "leak", item)
        original = f"fashioniq/images/{asin}.png"
        with Image.open(w.root / original) as im:
            data = leak_copy(im, transform, item_rng)
        stem = LEAK_CATEGORY[cat]
        folder = F200K_CATEGORIES[stem][0]
        rel = f"women/{folder}/{_fashion200k_subcategory(g)}/{item}/{item}_0.jpeg"
        w.bytes(f"fashion200k/{rel}", data)
        w.truth.append(
            {
                "source": "fashion200k",
                "native_id": f"{item}_0",
                "item_id": item,
                "view": 0,
                "path": f"fashion200k/{rel}",
                **g.as_dict(),
                "view_params": json.dumps(asdict(View()), sort_keys=True),
                "planted_from": original,
                "planted_transform": transform,
            }
        )
        description = product_description(item_rng, g, spec.noise)
        labels[stem]["train"].append(f"{rel}\t{item_rng.uniform(0.5, 1.0):.6f}\t{description}")
        w.progress.update(1)


def expected_image_count(spec: WorldSpec) -> int:
    """An upper bound on the number of images, for the progress bar."""
    f = spec.fashion200k.items_per_category * len(F200K_CATEGORIES) * spec.fashion200k.max_views
    d = spec.deepfashion_mm.items * spec.deepfashion_mm.max_views
    q = sum(spec.fashioniq.images.values()) * len(FIQ_CATEGORIES)
    return f + d + q + spec.planted_leaks


def generate_world(
    spec: WorldSpec, out_dir: str | os.PathLike[str], sidecar: str | os.PathLike[str], *, progress: bool = True
) -> dict[str, Any]:
    """Write the world to ``out_dir`` and its ground truth to ``sidecar`` (a Parquet file).

    The world is written to a temporary folder and moved into place at the end, so a killed
    run leaves no half-written tree behind. An existing ``out_dir`` is replaced only if it
    holds a previously generated world (its ``world.json``); anything else is refused.
    Returns the metadata stored in ``world.json``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / WORLD_MARKER).exists():
        raise FileExistsError(f"{out_dir} exists and is not a generated synthetic world; refusing to overwrite it")
    with atomic_directory(out_dir) as tmp:
        with tqdm(
            total=expected_image_count(spec), desc="rendering synthetic world", unit="img", disable=not progress
        ) as bar:
            writer = _Writer(tmp, spec.image_size, bar)
            labels = _write_fashion200k(writer, spec)
            _write_deepfashion(writer, spec)
            val_images = _write_fashioniq(writer, spec)
            _plant_leaks(writer, spec, val_images, labels)
            _write_labels(writer, labels)
            bar.total = bar.n  # the estimate was an upper bound
            bar.refresh()
        truth = pd.DataFrame(writer.truth)
        counts = truth.groupby("source").size().to_dict()
        meta = {
            "generator": "fashionblip2.synthetic",
            "generator_version": GENERATOR_VERSION,
            "spec": spec.to_dict(),
            "images": {k: int(v) for k, v in counts.items()},
            "planted_leaks": spec.planted_leaks,
            "note": "synthetic data: rendered garments, not real product photos",
        }
        (tmp / WORLD_MARKER).write_text(dumps_json(meta), encoding="utf-8")
        write_parquet_atomic(sidecar, truth)
    return meta
