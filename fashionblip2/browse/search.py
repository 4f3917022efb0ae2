"""Composed search for the browser: the run's models and gallery indexes, loaded lazily and kept,
uploads checked before they are decoded and kept in memory only, and one query as the
``fashionblip2 search`` command makes it (the same preprocessing, tokenizer, model and FAISS index).

A query's reference image goes through the image encoder once: its features are cached per model,
so a second text on the same reference costs the text encoding, the Q-Former fusion and the
search only (what ``benchmarks/browse_latency.py`` measures).
"""

from __future__ import annotations

import io
import json
import math
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fashionblip2.browse.data import BrowseError
from fashionblip2.common.images import load_as_stored
from fashionblip2.model.processing import model_image, normalise

INDEXES = "results/index"  # results/index/<stage>/<variant>, as rules/common.smk's SEARCH_INDEX
MODELS = "models"  # models/<stage>/<variant>: for an index that records no model folder

MAX_TEXT_CHARS = 1_000  # the paper's texts are under 300 characters; the tokenizer cuts at 128 tokens anyway
MAX_UPLOAD_BYTES = 20 * 2**20
# Checked from the header before decoding: 40 MP is a 7,300 x 5,500 photo, more than any product
# image, and 160 MB once decoded to RGB; a 100-megapixel or bomb file is refused unread.
MAX_PIXELS = 40_000_000
UPLOAD_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
MAX_K = 100
MAX_MODELS_PER_QUERY = 2
# Warnings filters are process-wide: decoding uploads one at a time keeps catch_warnings from
# restoring another thread's filters.
_DECODE_LOCK = threading.Lock()


# --- uploads -----------------------------------------------------------------------------------


def clean_name(raw: str | None) -> str:
    """A file name as the browser sent it (percent-encoded: headers are ASCII), kept as text and cut
    to 200 characters; the page shows it with textContent, never as markup."""
    name = unquote(raw or "")
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:200] or "upload"


def decode_upload(data: bytes) -> Image.Image:
    """An uploaded file as its file stores it (each model converts it to RGB as it was trained:
    images.mode), or a BrowseError saying why not. The size is read from the
    header and checked before a pixel is decoded; PIL's decompression-bomb warning is an error."""
    if not data:
        raise BrowseError("the upload is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BrowseError(f"the upload has {len(data):,} bytes; at most {MAX_UPLOAD_BYTES:,}", 413)
    with _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height, kind = image.width, image.height, image.format
                if kind not in UPLOAD_FORMATS:
                    raise BrowseError(
                        f"{kind} images are not accepted; send one of {', '.join(sorted(UPLOAD_FORMATS))}"
                    )
                if width * height > MAX_PIXELS:
                    raise BrowseError(
                        f"the image is {width:,} x {height:,} = {width * height / 1e6:.0f} megapixels; "
                        f"at most {MAX_PIXELS / 1e6:.0f} megapixels"
                    )
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # PIL's own check, inside Image.open, fires first past its limit (89 MP): say so, and ours.
            raise BrowseError(
                f"refused as a decompression bomb ({e}); at most {MAX_PIXELS / 1e6:.0f} megapixels"
            ) from None
        except UnidentifiedImageError:
            raise BrowseError("not an image: the file's format is not recognised") from None
        except (OSError, SyntaxError, ValueError) as e:  # PIL's truncated or corrupt data
            raise BrowseError(f"the image is truncated or corrupt: {e}") from None
        return load_as_stored(io.BytesIO(data))


class Uploads:
    """Uploaded images in memory, by a random token; the least recently used are dropped past
    ``keep`` images or ``max_pixels`` in all (the newest always stays). Nothing is written to disk."""

    def __init__(self, keep: int = 16, max_pixels: int = 4 * MAX_PIXELS):
        # 4 x 40 MP of RGB is 480 MB at most, whatever people upload
        self.keep = keep
        self.max_pixels = max_pixels
        self._images: OrderedDict[str, tuple[Image.Image, str]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, image: Image.Image, name: str) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._images[token] = (image, name)
            while len(self._images) > 1 and (
                len(self._images) > self.keep
                or sum(i.width * i.height for i, _ in self._images.values()) > self.max_pixels
            ):
                self._images.popitem(last=False)
        return token

    def __len__(self) -> int:
        return len(self._images)

    def get(self, token: str) -> Image.Image:
        with self._lock:
            if token not in self._images:
                raise BrowseError("unknown or expired upload: upload the image again", 404)
            self._images.move_to_end(token)
            return self._images[token][0]


def check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise BrowseError("text must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise BrowseError(f"the text has {len(text):,} characters; at most {MAX_TEXT_CHARS:,}")
    text = text.strip()
    if not text:
        raise BrowseError("the modification text is empty: say how the target differs from the reference")
    return text


# --- models and indexes ------------------------------------------------------------------------


def _index_model(root: Path, index_dir: Path, name: str) -> Path | None:
    """The model an index was built from: the folder its ids.json names (relative to the run, as the
    workflow writes it: the first seed's model), else models/<stage>/<variant>. A folder outside the
    run is not loaded (None)."""
    recorded = json.loads((index_dir / "ids.json").read_text(encoding="utf-8")).get("model")
    if not recorded:
        return root / MODELS / name
    path = (root / recorded).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def discover(root: Path) -> dict[str, tuple[Path, Path]]:
    """``<stage>/<variant>`` -> (model folder, index folder), for every index under results/index
    whose model exists."""
    found = {}
    for index_dir in sorted((root / INDEXES).glob("*/*")):
        name = f"{index_dir.parent.name}/{index_dir.name}"
        if (index_dir / "gallery.faiss").is_file() and (index_dir / "ids.json").is_file():
            model_dir = _index_model(root, index_dir, name)
            if model_dir is not None and (model_dir / "config.json").is_file():
                found[name] = (model_dir, index_dir)
    return found


def pixels_of(image: Image.Image, size: int, mode: str = "rgb") -> torch.Tensor:
    """(1, 3, size, size): the preprocessing of ImageStore of an image as its file stores it (RGB where
    ``mode`` says, target pad, resize, crop, CLIP's normalisation)."""
    array = np.asarray(model_image(image, size, mode), dtype=np.uint8).copy()
    return normalise(torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0))


@dataclass
class LoadedModel:
    """A model with its tokenizer and gallery index, ready to answer queries."""

    name: str
    model: Any
    tokenizer: Any
    index: Any
    ids: list[str]
    device: torch.device
    features_kept: int = 64
    _features: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _vectors: np.ndarray | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.position = {k: i for i, k in enumerate(self.ids)}
        self.image_size = self.model.config.blip2_config().vision_config.image_size
        self.image_mode = self.model.config.image_mode
        dim = self.model.heads * self.model.config.head_dim
        if self.index.d != dim:
            raise BrowseError(
                f"{self.name}: its index holds {self.index.d}-d vectors but the model makes {dim}-d ones "
                "(the index was built with another model)",
                500,
            )

    @torch.no_grad()
    def warm_up(self, calls: int = 3) -> None:
        """A few throwaway queries at load: a model's first calls are slow (measured on the demo's
        model, 2 CPU threads: 180-430 ms each for the first three, 3-10 ms after), and the person's
        first query should not pay for them."""
        blank = Image.new("RGB", (self.image_size, self.image_size))
        features = self.model.image_features(pixels_of(blank, self.image_size).to(self.device))
        for _ in range(calls):
            self.search(self.encode(features, "is red and has shorter sleeves"), 10)

    @torch.no_grad()
    def features(self, key: str, image: Callable[[], Image.Image]) -> torch.Tensor:
        """The reference's image-encoder output, computed once per image (``key``) and kept."""
        with self._lock:
            if key in self._features:
                self._features.move_to_end(key)
                return self._features[key]
        out = self.model.image_features(pixels_of(image(), self.image_size, self.image_mode).to(self.device))
        with self._lock:
            self._features[key] = out
            while len(self._features) > self.features_kept:
                self._features.popitem(last=False)
        return out

    @torch.no_grad()
    def encode(self, features: torch.Tensor, text: str) -> np.ndarray:
        """Text encoding and fusion: the query vector of a reference (its features) and a text."""
        from fashionblip2.model.tokenization import tokenize

        ids, mask = tokenize(self.tokenizer, [text], self.model.config.max_text_length)
        query = self.model.query_embedding(None, ids.to(self.device), mask.to(self.device), image_embeds=features)
        return np.ascontiguousarray(query.float().cpu().numpy())

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, top = self.index.search(query, min(k, self.index.ntotal))
        return scores[0], top[0]

    def target_rank(self, query: np.ndarray, target_id: str) -> dict[str, Any] | None:
        """The known target's rank in the whole gallery and its score. Equal scores count in gallery
        order, the evaluation protocol's tie rule, so the rank is the target's place in the sorted gallery."""
        if target_id not in self.position:
            return None
        with self._lock:
            if self._vectors is None:  # the flat index's vectors, read back once
                self._vectors = self.index.reconstruct_n(0, self.index.ntotal)
        scores = self._vectors @ query[0]
        at = self.position[target_id]
        own = scores[at]
        rank = int((scores > own).sum() + (scores[:at] == own).sum()) + 1
        return {"image_id": target_id, "rank": rank, "score": float(own)}


class Models:
    """The run's searchable models by name, each loaded on first use and then kept."""

    def __init__(self, root: Path, device: torch.device):
        self.root = root
        self.device = device
        self.available = discover(root)
        self._loaded: dict[str, LoadedModel] = {}
        self._gallery_ids: dict[str, tuple[list[str], list[str]]] = {}
        self._locks = {name: threading.Lock() for name in self.available}

    def names(self) -> list[str]:
        # stage 2 (the FashionIQ-tuned models) first: the default choice
        return sorted(self.available, key=lambda n: (not n.startswith("stage2/"), n))

    def known(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.available:
            shown = name[:100] if isinstance(name, str) else type(name).__name__
            known = ", ".join(self.names()) or "none (no index under results/index)"
            raise BrowseError(f"unknown model {shown!r}; known: {known}", 404)
        return name

    def gallery(self, name: Any) -> tuple[list[str], list[str]]:
        """The index's image ids and paths (ids.json), without loading the model."""
        name = self.known(name)
        if name not in self._gallery_ids:
            meta = json.loads((self.available[name][1] / "ids.json").read_text(encoding="utf-8"))
            self._gallery_ids[name] = (meta["ids"], meta.get("paths", []))
        return self._gallery_ids[name]

    def get(self, name: Any) -> LoadedModel:
        name = self.known(name)
        with self._locks[name]:  # two first requests for one model load it once
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
        return self._loaded[name]

    def _load(self, name: str) -> LoadedModel:
        from fashionblip2.evaluation.retrieval import load_index
        from fashionblip2.model import FashionBLIP2
        from fashionblip2.model.tokenization import load_tokenizer

        model_dir, index_dir = self.available[name]
        index, ids, _ = load_index(index_dir)
        model = FashionBLIP2.from_pretrained(model_dir).to(self.device).eval()
        loaded = LoadedModel(name, model, load_tokenizer(model_dir), index, ids, self.device)
        loaded.warm_up()
        return loaded


@dataclass(frozen=True)
class Reference:
    """A query's reference image: a gallery/manifest image by id, or an upload by token."""

    key: str  # "id:<image id>" or "upload:<token>": the feature cache's key
    label: str
    load: Callable[[], Image.Image]


def run_query(
    models: Sequence[LoadedModel], reference: Reference, text: str, k: int, target_id: str | None
) -> list[dict[str, Any]]:
    """Top-k of each model for one query, with the known target's rank and the time of each step."""
    out = []
    for m in models:
        start = time.perf_counter()
        features = m.features(reference.key, reference.load)
        encoded = time.perf_counter()
        query = m.encode(features, text)
        fused = time.perf_counter()
        scores, top = m.search(query, k)
        searched = time.perf_counter()
        target = m.target_rank(query, target_id) if target_id else None
        out.append(
            {
                "model": m.name,
                "gallery": m.index.ntotal,
                "items": [
                    {"rank": r, "image_id": m.ids[i], "score": round(float(s), 5), "is_target": m.ids[i] == target_id}
                    for r, (i, s) in enumerate(zip(top.tolist(), scores.tolist(), strict=True), 1)
                    if i >= 0 and math.isfinite(s)
                ],
                "target": target,
                "timings_ms": {
                    "image": round(1000 * (encoded - start), 2),
                    "text_and_fusion": round(1000 * (fused - encoded), 2),
                    "search": round(1000 * (searched - fused), 2),
                },
            }
        )
    return out
