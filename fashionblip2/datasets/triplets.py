"""The triplet sets (FACap, FashionIQ, enhFashionIQ) and galleries, read from their files.

Image keys are the manifest's ids. FACap's files name images by their native id (as released);
:func:`native_index` maps those back through the manifest. A triplet whose image is not in the
manifest (missing or unreadable on disk) is skipped and counted, never a crash. No torch here:
rules that only read triplets (the quality sample) run in the data environment.
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

from fashionblip2.common.issues import InputReport
from fashionblip2.datasets.caption_text import clean_text, join_captions, random_caption
from fashionblip2.sources.fashioniq import image_key as fashioniq_key


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

    def training_text(self, i: int, rng: random.Random | None, randomise: bool, *, cleanup: str) -> str:
        """FACap: the modification text. FashionIQ training: the two captions in random order or one of
        them (as SPRC and CLIP4Cir do); FashionIQ evaluation: "c1 and c2". Then ``cleanup`` (config
        ``text.cleanup``: :func:`~fashionblip2.datasets.caption_text.clean_text`) on the whole text."""
        texts = self.texts[i]
        if len(texts) == 1:
            text = texts[0]
        else:
            text = random_caption(texts, rng) if randomise else join_captions(texts)
        return clean_text(text, cleanup)


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
