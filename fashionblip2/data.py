"""Training and evaluation data: images as model inputs, and the triplet sets read from their files.

- Images are padded to a square when their aspect ratio passes 1.25 (SPRC's "target pad"), resized,
  and normalised with CLIP's mean and std, as BLIP-2 was trained. :class:`ImageStore` keeps the
  resized images in memory as uint8 once read, so an epoch after the first decodes nothing.
- Image keys are the manifest's ids. FACap's files name images by their native id (as released);
  :func:`native_index` maps those back through the manifest. A triplet whose image is not in the
  manifest (missing or unreadable on disk) is skipped and counted, never a crash.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from fashionblip2.evaluation import join_captions, random_caption
from fashionblip2.images import load_rgb
from fashionblip2.report import InputReport
from fashionblip2.sources.fashioniq import image_key as fashioniq_key

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TARGET_PAD_RATIO = 1.25


def target_pad(image: Image.Image, size: int, ratio: float = TARGET_PAD_RATIO) -> Image.Image:
    """Pad to a square (black, centred) when the long side exceeds ``ratio`` x the short one, then resize."""
    w, h = image.size
    if max(w, h) / max(1, min(w, h)) > ratio:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    # Resize the short side, centre-crop: the pixels a square input sees.
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale))))
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def normalise(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float, CLIP-normalised."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels_uint8.float() / 255.0 - mean) / std


class ImageStore:
    """Model-ready pixels by image key, read once and kept in memory (uint8) when ``cache`` is on.
    Images not in memory are decoded by ``workers`` threads (Pillow releases the GIL while decoding
    and resizing), so a batch of 1,024 paper-scale images does not wait on one core."""

    def __init__(self, paths: dict[str, str], image_size: int, cache: bool = True, workers: int = 4):
        self.paths = paths
        self.image_size = image_size
        self.cache = cache
        self.workers = workers
        self._pixels: dict[str, torch.Tensor] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.paths

    def _load(self, key: str) -> torch.Tensor:
        image = target_pad(load_rgb(self.paths[key]), self.image_size)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def pixels(self, keys: Sequence[str]) -> torch.Tensor:
        todo = [k for k in dict.fromkeys(keys) if k not in self._pixels]
        loaded: dict[str, torch.Tensor] = {}
        if len(todo) > 1 and self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.workers) as pool:
                loaded = dict(zip(todo, pool.map(self._load, todo), strict=True))
        else:
            loaded = {k: self._load(k) for k in todo}
        if self.cache:
            self._pixels.update(loaded)
        return normalise(torch.stack([self._pixels[k] if k in self._pixels else loaded[k] for k in keys]))


def native_index(manifest: pd.DataFrame) -> dict[str, str]:
    """Native id (as FACap names images) -> manifest id, for the non-FashionIQ sources."""
    rows = manifest[manifest["source"] != "fashioniq"]
    return {i.split(":", 1)[1]: i for i in rows["image_id"]}


@dataclass
class Triplets:
    """Reference and target image keys, the texts of each triplet, and (FACap) the target's caption."""

    reference: list[str]
    target: list[str]
    texts: list[list[str]]
    category: list[str]
    target_caption: list[str] | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reference)

    def subset(self, indices: Sequence[int]) -> Triplets:
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return Triplets(
            pick(self.reference),
            pick(self.target),
            pick(self.texts),
            pick(self.category),
            pick(self.target_caption) if self.target_caption is not None else None,
            dict(self.skipped),
        )

    def fraction(self, fraction: float, seed: int) -> Triplets:
        """A seeded random subset of ``fraction`` of the triplets (nested: a smaller fraction is a
        subset of a larger one for the same seed, as the paper's growing subsets)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], not {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        keep = sorted(order[: max(1, round(fraction * len(self)))].tolist())
        return self.subset(keep)

    def training_text(self, i: int, rng: random.Random, randomise: bool) -> str:
        """FACap: the modification text. FashionIQ training: the two captions in random order or one of
        them (DESIGN.md §7); FashionIQ evaluation: "c1 and c2"."""
        texts = self.texts[i]
        if len(texts) == 1:
            return texts[0]
        return random_caption(texts, rng) if randomise else join_captions(texts)


def read_facap(facap_dir: str | os.PathLike[str], manifest: pd.DataFrame, report: InputReport) -> Triplets:
    """FACap's ``cir_triplets`` and ``image_captions`` files, with images resolved through the manifest."""
    facap_dir = Path(facap_dir)
    index = native_index(manifest)
    out = Triplets([], [], [], [], [])
    files = sorted((facap_dir / "cir_triplets").glob("*_train_triplets.json"))
    if not files:
        raise FileNotFoundError(f"{facap_dir / 'cir_triplets'}: no *_train_triplets.json files")
    for path in files:
        category = path.name[: -len("_train_triplets.json")]
        captions = json.loads((facap_dir / "image_captions" / f"{category}_train_captions.json").read_text())
        for n, entry in enumerate(json.loads(path.read_text())):
            ref, tgt = index.get(entry["candidate"]), index.get(entry["target"])
            if ref is None or tgt is None:
                missing = entry["candidate"] if ref is None else entry["target"]
                report.skip("facap", path.name, None, f"entry {n}", f"image not in the manifest: {missing}")
                continue
            if entry["target"] not in captions:
                report.skip("facap", path.name, None, f"entry {n}", "target image has no caption")
                continue
            out.reference.append(ref)
            out.target.append(tgt)
            out.texts.append([entry["captions"][0]])
            out.category.append(category)
            out.target_caption.append(captions[entry["target"]])
    out.skipped = {"facap": report.count("skipped", "facap")}
    return out


def read_fashioniq_split(
    root: str | os.PathLike[str],
    split: str,
    categories: Sequence[str],
    available: set[str],
    report: InputReport,
    source: str = "fashioniq",
) -> Triplets:
    """Triplets of ``captions/cap.<cat>.<split>.json`` under ``root`` (FashionIQ or enhFashionIQ) whose
    two images are ``available`` (manifest keys); the others are skipped and counted."""
    from fashionblip2.sources import read_fashioniq_triplets

    frame = read_fashioniq_triplets(root, report, categories=list(categories), splits=[split])
    out = Triplets([], [], [], [])
    skipped = 0
    for row in frame.itertuples():
        ref, tgt = fashioniq_key(row.category, row.candidate), fashioniq_key(row.category, row.target)
        if ref not in available or tgt not in available:
            missing = row.candidate if ref not in available else row.target
            report.skip(source, row.file, int(row.line), missing, "triplet image missing")
            skipped += 1
            continue
        out.reference.append(ref)
        out.target.append(tgt)
        out.texts.append(list(row.captions))
        out.category.append(row.category)
    out.skipped = {"image missing": skipped}
    return out


def read_gallery(
    root: str | os.PathLike[str], category: str, split: str, available: set[str], report: InputReport
) -> list[str]:
    """The image keys of ``image_splits/split.<cat>.<split>.json`` that exist; missing ones are counted."""
    rel = f"image_splits/split.{category}.{split}.json"
    keys = []
    for asin in json.loads((Path(root) / rel).read_text()):
        key = fashioniq_key(category, asin)
        if key in available:
            keys.append(key)
        else:
            report.skip("fashioniq", rel, None, asin, "gallery image missing")
    return keys


def pretraining_pairs(manifest: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(image key, product text) of every image with a product text, FashionIQ excluded (its val
    split is the evaluation set)."""
    rows = manifest[(manifest["source"] != "fashioniq") & manifest["product_text"].fillna("").str.strip().ne("")]
    return rows["image_id"].tolist(), rows["product_text"].tolist()
