"""Leakage between FACap and the evaluation images, checked at three levels (paper §3.1 claims "images
in both datasets are distinct from those used in the downstream datasets"; nothing in the paper checks it).

- exact: the same file bytes (SHA-256);
- near-duplicate: perceptual hashes (``imagehash.dhash``, 64 bits) within a Hamming distance, each
  held-out image hashed as it is and at a few centre crops (``leakage.crop_fractions``), since a
  crop moves a hash more than a resize, a re-encode or a colour shift do;
- semantic: CLIP cosine of the embeddings the workflow already computed, at or above a threshold.

Both thresholds are inclusive. Every FACap image is compared with every held-out image (FashionIQ
val and test, enhFashionIQ's images among them) by blocked all-pairs products: the cosine level is
one float32 matrix product per block plus a comparison (benchmarks/leakage.py measures it against
the product alone), the Hamming level an XOR and a popcount per pair of 64-bit hashes. Inside FACap,
each triplet's reference and target are compared too (a triplet whose target is its reference teaches
nothing). The semantic level is not applied there: pairs are chosen among each other's most similar
images, so a high cosine is what a pair is, not a defect.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVELS = ("exact", "near_duplicate", "semantic")
ACTIONS = ("report", "drop", "fail")
# Rows of a held-out block of the cosine product: 4096 x 15,536 float32 scores are 254 MB.
COSINE_BLOCK = 4096
HAMMING_BLOCK = 512  # x 15,536 held-out images x their crops, uint64
MATCH_COLUMNS = [
    "kind",  # heldout: a FACap image against an evaluation image; reference_target: inside a FACap pair
    "image_a",
    "path_a",
    "image_b",
    "path_b",
    "heldout_sets",
    "exact",
    "hash_distance",
    "cosine",
    "levels",
]


@dataclass(frozen=True)
class Thresholds:
    """``leakage.hash_max_distance`` (bits of 64, inclusive) and ``leakage.cosine_min`` (inclusive)."""

    hash_max_distance: int
    cosine_min: float


def file_digests(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """SHA-256 of each file's bytes (hex)."""
    out = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append(h.hexdigest())
    return np.array(out, dtype=str)


def perceptual_hash(path: str | os.PathLike[str]) -> int:
    """imagehash's dHash (signs of the horizontal gradients of the 9x8 greyscale image), as a 64-bit
    integer. Robust to resizing, re-encoding and mild colour shifts; crops move it more. Chosen over
    pHash on measurement: on the synthetic world's flat renders pHash moved 14-16 bits under a mere
    resize or re-encode (its DCT coefficients sit near their median), dHash 0-3 (README)."""
    from PIL import Image

    with Image.open(path) as im:
        return _dhash(im.convert("RGB"))


def _dhash(img) -> int:
    import imagehash

    bits = imagehash.dhash(img, hash_size=8).hash.reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def crop_variants(img, fractions: Sequence[float]) -> list:
    """The image, then its centre crops (``f`` of the width and height off each side), back to size."""
    w, h = img.size
    out = [img]
    for f in fractions:
        dx, dy = round(w * f), round(h * f)
        if 0 < dx < w / 2 and 0 < dy < h / 2:
            out.append(img.crop((dx, dy, w - dx, h - dy)).resize((w, h)))
        else:
            out.append(img)
    return out


def perceptual_hashes(paths: Sequence[str | os.PathLike[str]], crop_fractions: Sequence[float] = ()) -> np.ndarray:
    """dHash of each image and of its centre crops: shape (n, 1 + len(crop_fractions)), uint64."""
    from PIL import Image

    out = np.zeros((len(paths), 1 + len(crop_fractions)), dtype=np.uint64)
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            img = im.convert("RGB")
        out[k] = [_dhash(v) for v in crop_variants(img, crop_fractions)]
    return out


def exact_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with a[i] == b[j] (digests)."""
    left = pd.DataFrame({"key": a, "i": np.arange(len(a))})
    right = pd.DataFrame({"key": b, "j": np.arange(len(b))})
    m = left.merge(right, on="key").sort_values(["i", "j"])
    return m["i"].to_numpy(np.int64), m["j"].to_numpy(np.int64)


def _blocks(n: int, block: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, block):
        yield start, min(start + block, n)


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of 64-bit hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def variant_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distance of two aligned hash tables (n, va) and (n, vb): the least over their variants."""
    a, b = np.atleast_2d(np.asarray(a, np.uint64)), np.atleast_2d(np.asarray(b, np.uint64))
    if len(a) == 0:
        return np.zeros(0, np.int64)
    return hamming_distance(a[:, :, None], b[:, None, :]).min(axis=(1, 2))


def hamming_pairs(
    a: np.ndarray, b: np.ndarray, max_distance: int, block: int = HAMMING_BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j, distance) with Hamming(a[i], b[j]) <= max_distance, ordered by (i, j).

    ``b`` may hold several hashes per row (m, variants): the distance is then the least over them.
    Two hashes within ``max_distance`` bits agree exactly on one of ``max_distance + 1`` disjoint
    chunks of their 64 bits (pigeonhole), so only pairs sharing a chunk are compared: near-linear
    where hashes spread, instead of every pair. When the chunks would be too narrow to sort the pairs
    out (or too many pairs share one), every pair is compared, block by block: the same result."""
    a = np.asarray(a, np.uint64).reshape(len(a), -1)[:, 0]
    b = np.asarray(b, np.uint64)
    b = b.reshape(len(b), -1)
    chunks = max_distance + 1
    if 0 <= max_distance < 64 and 64 // chunks >= 8 and len(a) and b.size:
        found = _hamming_pairs_chunked(a, b, max_distance, chunks)
        if found is not None:
            return found
    return _hamming_pairs_all(a, b, max_distance, block)


def _hamming_pairs_all(
    a: np.ndarray, b: np.ndarray, max_distance: int, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out_i, out_j, out_d = [], [], []
    for s, e in _blocks(len(a), block):
        d = np.bitwise_count(np.bitwise_xor(a[s:e, None, None], b[None, :, :])).min(axis=2)
        i, j = np.nonzero(d <= max_distance)
        out_i.append(i + s)
        out_j.append(j)
        out_d.append(d[i, j].astype(np.int64))
    return _cat(out_i), _cat(out_j), _cat(out_d)


def _hamming_pairs_chunked(
    a: np.ndarray, b: np.ndarray, max_distance: int, chunks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The pigeonhole search of :func:`hamming_pairs`; None when too many pairs share a chunk (then
    comparing every pair is as cheap)."""
    variants = b.shape[1]
    flat = b.reshape(-1)
    width = 64 // chunks
    candidates = []
    for c in range(chunks):
        shift = np.uint64(c * width)
        bits = 64 - c * width if c == chunks - 1 else width
        mask = np.uint64((1 << bits) - 1)
        key_a, key_b = (a >> shift) & mask, (flat >> shift) & mask
        order = np.argsort(key_b, kind="stable")
        sorted_b = key_b[order]
        lo = np.searchsorted(sorted_b, key_a, side="left")
        hi = np.searchsorted(sorted_b, key_a, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if total > len(a) * flat.size // 4:
            return None
        rows = np.repeat(np.arange(len(a), dtype=np.int64), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        cols = order[np.arange(total, dtype=np.int64) - starts + np.repeat(lo, counts)]
        candidates.append(rows * flat.size + cols)
    pair = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, np.int64)
    i, flat_j = pair // flat.size, pair % flat.size
    d = hamming_distance(a[i], flat[flat_j])
    keep = d <= max_distance
    i, j, d = i[keep], flat_j[keep] // variants, d[keep]
    # The least distance over each held-out row's variants: one entry per (i, j).
    order = np.lexsort((d, j, i))
    i, j, d = i[order], j[order], d[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], d[first]


def cosine_pairs(
    x: np.ndarray, y: np.ndarray, threshold: float, block: int = COSINE_BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j, cosine) with x[i] . y[j] >= threshold (rows L2-normalised, float32 products).

    One matrix product per block of ``x`` rows into a reused buffer, then one read of it for each
    row's best score: the cost is the product itself plus that read."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    yt = np.ascontiguousarray(np.asarray(y, dtype=np.float32).T)
    out_i, out_j, out_s = [], [], []
    buffer = np.empty((min(block, max(len(x), 1)), yt.shape[1]), dtype=np.float32)
    for s, e in _blocks(len(x), block):
        scores = buffer[: e - s]
        np.matmul(x[s:e], yt, out=scores)
        # One read of the block finds the rows with a match (few); only those are searched.
        rows = np.nonzero(scores.max(axis=1) >= np.float32(threshold))[0]
        i, j = np.nonzero(scores[rows] >= np.float32(threshold))
        out_i.append(rows[i] + s)
        out_j.append(j)
        out_s.append(scores[rows[i], j])
    return _cat(out_i), _cat(out_j), _cat(out_s, np.float32)


def _cat(parts: list[np.ndarray], dtype=np.int64) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


@dataclass
class ImageSet:
    """Images to compare: ids, paths, their digests, perceptual hashes (dHash) and (L2-normalised) vectors,
    row-aligned. ``sets`` names what each image belongs to (held-out images only, e.g. "fashioniq_val")."""

    image_ids: np.ndarray
    paths: np.ndarray
    digests: np.ndarray
    hashes: np.ndarray
    vectors: np.ndarray
    sets: np.ndarray | None = None

    @classmethod
    def read(
        cls,
        image_ids: Sequence[str],
        paths: Sequence[str],
        vectors: np.ndarray,
        sets: Sequence[str] | None = None,
        crop_fractions: Sequence[float] = (),
    ) -> ImageSet:
        """Hash each file once (SHA-256 and dHash, with ``crop_fractions``' centre crops); the vectors
        are the workflow's embeddings."""
        paths = list(paths)
        return cls(
            np.asarray(image_ids, dtype=str),
            np.asarray(paths, dtype=str),
            file_digests(paths),
            perceptual_hashes(paths, crop_fractions),
            np.asarray(vectors, dtype=np.float32),
            None if sets is None else np.asarray(sets, dtype=str),
        )


def heldout_matches(
    facap: ImageSet, heldout: ImageSet, thresholds: Thresholds, levels: Sequence[str] = LEVELS
) -> pd.DataFrame:
    """Every (FACap image, held-out image) pair matched at one of ``levels`` at least, with both scores."""
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown leakage levels {sorted(unknown)}; expected some of {list(LEVELS)}")
    found: dict[tuple[int, int], set[str]] = {}
    checks = {
        "exact": lambda: exact_pairs(facap.digests, heldout.digests),
        "near_duplicate": lambda: hamming_pairs(facap.hashes, heldout.hashes, thresholds.hash_max_distance)[:2],
        "semantic": lambda: cosine_pairs(facap.vectors, heldout.vectors, thresholds.cosine_min)[:2],
    }
    for level in LEVELS:
        if level not in levels:
            continue
        i, j = checks[level]()
        for key in zip(i.tolist(), j.tolist(), strict=True):
            found.setdefault(key, set()).add(level)
    keys = sorted(found)
    i = np.array([k[0] for k in keys], dtype=np.int64)
    j = np.array([k[1] for k in keys], dtype=np.int64)
    return _match_frame("heldout", facap, i, heldout, j, [found[k] for k in keys], heldout.sets)


def reference_target_matches(
    facap: ImageSet, references: np.ndarray, targets: np.ndarray, thresholds: Thresholds, levels: Sequence[str] = LEVELS
) -> pd.DataFrame:
    """FACap pairs (rows of ``facap``) whose reference and target are the same picture: exact or
    near-duplicate (the semantic level is no defect inside a pair: see the module's note)."""
    references, targets = np.asarray(references, np.int64), np.asarray(targets, np.int64)
    exact = (facap.digests[references] == facap.digests[targets]) & ("exact" in levels)
    near = variant_distance(facap.hashes[references], facap.hashes[targets]) <= thresholds.hash_max_distance
    near &= "near_duplicate" in levels
    hit = np.nonzero(exact | near)[0]
    levels = [{name for name, flag in (("exact", exact[k]), ("near_duplicate", near[k])) if flag} for k in hit]
    return _match_frame("reference_target", facap, references[hit], facap, targets[hit], levels, None)


def _match_frame(
    kind: str, a: ImageSet, i: np.ndarray, b: ImageSet, j: np.ndarray, levels: list[set[str]], sets
) -> pd.DataFrame:
    cosine = np.einsum("nd,nd->n", a.vectors[i], b.vectors[j]) if len(i) else np.zeros(0, np.float32)
    return pd.DataFrame(
        {
            "kind": kind,
            "image_a": a.image_ids[i],
            "path_a": a.paths[i],
            "image_b": b.image_ids[j],
            "path_b": b.paths[j],
            "heldout_sets": sets[j] if sets is not None else "",
            "exact": a.digests[i] == b.digests[j],
            "hash_distance": variant_distance(a.hashes[i], b.hashes[j]),
            "cosine": np.round(cosine.astype(np.float64), 6),
            "levels": [";".join(lv for lv in LEVELS if lv in s) for s in levels],
        },
        columns=MATCH_COLUMNS,
    )


def level_counts(matches: pd.DataFrame) -> dict[str, int]:
    """Matched pairs per level (a pair matched at two levels counts in both)."""
    return {level: int(matches["levels"].str.split(";").apply(lambda s, lv=level: lv in s).sum()) for level in LEVELS}


def triplets_touching(triplets: pd.DataFrame, leaked: set[str], degenerate: set[tuple[str, str]]) -> np.ndarray:
    """Boolean mask of triplets (reference_id, target_id) that touch a leaked image, or whose
    reference and target are the same picture."""
    touches = triplets["reference_id"].isin(leaked) | triplets["target_id"].isin(leaked)
    same = pd.Series(
        [(r, t) in degenerate for r, t in zip(triplets["reference_id"], triplets["target_id"], strict=True)],
        index=triplets.index,
        dtype=bool,
    )
    return (touches | same).to_numpy()


PAPER_CLAIM = (
    "images in both datasets are distinct from those used in the downstream datasets, "
    "ensuring there is no information leakage"
)


def claim_line(summary: dict, action: str, removed: int, degenerate_removed: int) -> dict:
    """The paper's claim as a checked line of the data card, with the numbers behind it."""
    t, n, checked = summary["thresholds"], summary["levels"], summary["levels_checked"]
    leaked = summary["leaked_images"]
    crops = ", ".join(f"{f:g}" for f in t["crop_fractions"]) or "none"
    level_text = {
        "exact": f"exact (SHA-256) {n['exact']}",
        "near_duplicate": f"near-duplicate (dHash Hamming <= {t['hash_max_distance']}, crops {crops}) "
        f"{n['near_duplicate']}",
        "semantic": f"semantic (CLIP cosine >= {t['cosine_min']}) {n['semantic']}",
    }
    levels = "; ".join(level_text[lv] if lv in checked else f"{lv} not checked" for lv in LEVELS)
    verb = "kept" if action == "report" else "removed"
    text = (
        f"{summary['facap_images']} candidate FACap images compared with {summary['heldout_images']} FashionIQ "
        f"val/test images (enhFashionIQ's {summary['enhfashioniq_images']} among them): {leaked} FACap images "
        f"match one (matched pairs: {levels}); leakage.action {action}: {removed} triplets touching them {verb}, "
        f"{degenerate_removed} more whose reference is its target {verb}"
    )
    return {
        "paper": PAPER_CLAIM,
        "holds_for_candidates": leaked == 0,
        "holds_for_this_release": leaked == 0 or action != "report",
        "checked": text,
    }


@dataclass(frozen=True)
class LeakageSettings:
    """The config's ``leakage`` section, less the action (which the data card applies)."""

    levels: tuple[str, ...]
    hash_max_distance: int
    cosine_min: float
    crop_fractions: tuple[float, ...]

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.hash_max_distance, self.cosine_min)


def _vectors_for(ids: np.ndarray, image_ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, int]:
    """Vectors of ``ids`` (zeros, which match nothing, for an image without one), and how many lack one."""
    position = pd.Series(np.arange(len(image_ids)), index=pd.Index(image_ids))
    found = position.reindex(ids)
    out = np.zeros((len(ids), dim), dtype=np.float32)
    has = found.notna().to_numpy()
    out[has] = vectors[found[has].astype(np.int64).to_numpy()]
    return out, int((~has).sum())


def check_leakage(
    images: pd.DataFrame,
    pairs: pd.DataFrame,
    embedded: tuple[np.ndarray, np.ndarray],
    facap_sources: Sequence[str],
    settings: LeakageSettings,
) -> tuple[pd.DataFrame, dict]:
    """Compare FACap's candidate images (every image of a pair of ``facap_sources``) with every
    FashionIQ val and test image of the manifest ``images``, and each FACap pair's reference with its
    target. ``embedded``: (image ids, L2-normalised vectors) of the workflow's embeddings (pairing's
    and the held-out images'). Returns (the matched pairs, a summary with the leaked image ids)."""
    facap_pairs = pairs[pairs["source"].isin(list(facap_sources))]
    candidate_ids = np.array(sorted(set(facap_pairs["reference_id"]) | set(facap_pairs["target_id"])), dtype=str)
    heldout_rows = images[(images["source"] == "fashioniq") & images["split"].isin(["val", "test"])]
    heldout_rows = heldout_rows.sort_values("image_id")
    fiq_pairs = pairs[pairs["source"] == "fashioniq"]
    enh = set(fiq_pairs["reference_id"]) | set(fiq_pairs["target_id"])
    sets = [
        f"fashioniq_{split}" + (";enhfashioniq" if image_id in enh else "")
        for image_id, split in zip(heldout_rows["image_id"], heldout_rows["split"], strict=True)
    ]
    path_of = images.set_index("image_id")["path"]
    ids, vectors = embedded
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    facap_vectors, facap_missing = _vectors_for(candidate_ids, ids, vectors, dim)
    heldout_vectors, heldout_missing = _vectors_for(heldout_rows["image_id"].to_numpy(), ids, vectors, dim)
    facap = ImageSet.read(candidate_ids, path_of.loc[candidate_ids].tolist(), facap_vectors)
    heldout = ImageSet.read(
        heldout_rows["image_id"].to_numpy(),
        heldout_rows["path"].tolist(),
        heldout_vectors,
        sets,
        crop_fractions=settings.crop_fractions,
    )
    thresholds = settings.thresholds
    outside = heldout_matches(facap, heldout, thresholds, settings.levels)
    row = pd.Series(np.arange(len(candidate_ids)), index=pd.Index(candidate_ids))
    inside = reference_target_matches(
        facap,
        row.loc[facap_pairs["reference_id"]].to_numpy(),
        row.loc[facap_pairs["target_id"]].to_numpy(),
        thresholds,
        settings.levels,
    )
    matches = pd.concat([outside, inside], ignore_index=True)
    leaked = sorted(set(outside["image_a"]))
    per_set = {
        name: int(outside["heldout_sets"].str.split(";").apply(lambda s, n=name: n in s).sum())
        for name in ("fashioniq_val", "fashioniq_test", "enhfashioniq")
    }
    summary = {
        "levels_checked": list(settings.levels),
        "thresholds": {
            "hash_max_distance": settings.hash_max_distance,
            "cosine_min": settings.cosine_min,
            "crop_fractions": list(settings.crop_fractions),
        },
        "facap_images": len(candidate_ids),
        "heldout_images": len(heldout_rows),
        "heldout_by_split": {s: int((heldout_rows["split"] == s).sum()) for s in ("val", "test")},
        "enhfashioniq_images": int(sum(";enhfashioniq" in s for s in sets)),
        "without_embedding": {"facap": facap_missing, "heldout": heldout_missing},
        "matched_pairs": len(outside),
        "matched_pairs_by_heldout_set": per_set,
        "levels": level_counts(outside),
        "leaked_images": len(leaked),
        "leaked": leaked,
        "reference_target_pairs": len(inside),
        "reference_target": sorted([a, b] for a, b in zip(inside["image_a"], inside["image_b"], strict=True)),
    }
    return matches, summary


def drop_leaked(triplets: pd.DataFrame, summary: dict, action: str) -> tuple[pd.DataFrame, dict]:
    """Apply ``leakage.action`` to FACap's triplets: drop removes those touching a leaked image and
    those whose reference is its target; report keeps them; fail (which the leakage rule already
    enforced) refuses any. Returns (triplets kept, the data card's
    leakage entry with the claim line)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown leakage.action {action!r}; expected one of {list(ACTIONS)}")
    if action == "fail" and (summary["leaked"] or summary["reference_target"]):
        raise ValueError("leakage.action is fail and the leakage check matched images: FACap is not built")
    leaked = set(summary["leaked"])
    degenerate = {tuple(p) for p in summary["reference_target"]}
    touching = triplets_touching(triplets, leaked, set())
    same = triplets_touching(triplets, set(), degenerate)
    removed, degenerate_removed = int(touching.sum()), int((same & ~touching).sum())
    kept = triplets if action == "report" else triplets[~(touching | same)]
    card = {
        "action": action,
        "levels_checked": summary["levels_checked"],
        "thresholds": summary["thresholds"],
        "leaked_images": summary["leaked_images"],
        "triplets_touching_leaked_images": removed,
        "triplets_reference_is_target": degenerate_removed,
        "triplets_removed": 0 if action == "report" else removed + degenerate_removed,
        "claim": claim_line(summary, action, removed, degenerate_removed),
    }
    return kept, card
