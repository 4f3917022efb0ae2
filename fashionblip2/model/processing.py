"""Training and evaluation images as model inputs (the triplet sets are read by
:mod:`fashionblip2.datasets.triplets`).

Images go through the "target pad" preprocessing of CLIP4Cir and SPRC, the baselines FashionIQ
numbers are compared with: an image whose aspect ratio reaches 1.25 is padded (black, centred) to
that ratio, not to a square; then the short side is resized (bicubic) and the centre cropped; then
CLIP's mean and std normalise it, as BLIP-2 was trained. :class:`ImageStore` keeps the
resized images in memory as uint8 once read, so an epoch after the first decodes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from fashionblip2.common.images import load_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TARGET_PAD_RATIO = 1.25


def target_pad(image: Image.Image, size: int, ratio: float = TARGET_PAD_RATIO) -> Image.Image:
    """CLIP4Cir's and SPRC's ``targetpad_transform`` up to the tensor, pixel for pixel: ``TargetPad``,
    ``Resize(size, BICUBIC)``, ``CenterCrop(size)`` (their rounding included)."""
    w, h = image.size
    if max(w, h) / min(w, h) >= ratio:  # theirs: "if actual_ratio < target_ratio: return image"
        target = max(w, h) / ratio  # pad the short side up to long / ratio, not to a square
        hp, vp = max(int((target - w) / 2), 0), max(int((target - h) / 2), 0)
        canvas = Image.new("RGB", (w + 2 * hp, h + 2 * vp))
        canvas.paste(image, (hp, vp))
        image, (w, h) = canvas, canvas.size
    # torchvision's Resize(int): the short side to `size`, the long one truncated to keep the ratio.
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    # torchvision's CenterCrop: offsets rounded half to even, as Python's round does.
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
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
