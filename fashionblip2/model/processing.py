"""Training and evaluation images as model inputs (the triplet sets are read by
:mod:`fashionblip2.datasets.triplets`).

Images go through the "target pad" preprocessing of CLIP4Cir and SPRC, the baselines FashionIQ
numbers are compared with: an image whose aspect ratio reaches 1.25 is padded (black, centred) to
that ratio, not to a square; then the short side is resized (bicubic) and the centre cropped; then
CLIP's mean and std normalise it, as BLIP-2 was trained. :class:`ImageStore` keeps the
resized images in memory as uint8 once read, so an epoch after the first decodes nothing.

Where the conversion to RGB happens is the model's ``image_mode`` (config ``images.mode``, saved in
the model's config, so whatever loads a model prepares images as it was trained): ``rgb`` converts
first (:func:`fashionblip2.common.images.load_rgb`: alpha over white, 16-bit scaled), ``sprc`` last,
after the crop, as SPRC's and CLIP4Cir's ``targetpad_transform`` (``PIL.Image.open`` as the dataset
opens it, ``TargetPad``, ``Resize``, ``CenterCrop``, then ``convert("RGB")``): the padding is zeros
in the file's own mode (palette index 0, white in CMYK), a palette is resized by its indices
(nearest), and PIL's own conversion clips 16-bit values. An RGB file gives the same pixels in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from fashionblip2.common.images import IMAGE_MODES, load_as_stored, load_rgb, to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TARGET_PAD_RATIO = 1.25


def target_pad(image: Image.Image, size: int, ratio: float = TARGET_PAD_RATIO) -> Image.Image:
    """CLIP4Cir's and SPRC's ``targetpad_transform`` up to the tensor, pixel for pixel: ``TargetPad``,
    ``Resize(size, BICUBIC)``, ``CenterCrop(size)`` (their rounding included), in the image's own mode
    (black bars for RGB; see :func:`pad_with_zeros` for the others)."""
    w, h = image.size
    if max(w, h) / min(w, h) >= ratio:  # theirs: "if actual_ratio < target_ratio: return image"
        target = max(w, h) / ratio  # pad the short side up to long / ratio, not to a square
        hp, vp = max(int((target - w) / 2), 0), max(int((target - h) / 2), 0)
        image = pad_with_zeros(image, hp, vp)
        w, h = image.size
    # torchvision's Resize(int): the short side to `size`, the long one truncated to keep the ratio.
    # (PIL resizes "P" and "1" images with NEAREST whatever it is asked, and RGBA/LA premultiplied.)
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    # torchvision's CenterCrop: offsets rounded half to even, as Python's round does.
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def pad_with_zeros(image: Image.Image, horizontal: int, vertical: int) -> Image.Image:
    """torchvision's ``F.pad(image, [h, v, h, v], 0, "constant")`` on a PIL image (TargetPad's call):
    every band 0 in the image's own mode, so black for RGB and L, transparent black for RGBA, white
    for CMYK, palette index 0 (whatever colour it is) for "P", whose palette is kept."""
    if image.mode == "RGB":  # the common case, as it always was
        canvas = Image.new("RGB", (image.width + 2 * horizontal, image.height + 2 * vertical))
        canvas.paste(image, (horizontal, vertical))
        return canvas
    bands = len(image.getbands())  # torchvision's _parse_fill: one 0 per channel ("P": one index)
    fill = 0 if bands == 1 else (0,) * bands
    padded = ImageOps.expand(image, border=(horizontal, vertical, horizontal, vertical), fill=fill)
    if image.mode == "P":
        padded.putpalette(image.getpalette())  # as torchvision does after ImageOps.expand
    return padded


def model_image(image: Image.Image, size: int, mode: str = "rgb") -> Image.Image:
    """The ``size`` x ``size`` 8-bit RGB image a model sees, from an image as its file stores it
    (:func:`fashionblip2.common.images.load_as_stored`): under ``rgb`` converted first, then
    :func:`target_pad`; under ``sprc`` :func:`target_pad` in its own mode, then converted (PIL's
    ``convert("RGB")``: alpha dropped, 16-bit clipped), as SPRC's ``targetpad_transform``."""
    check_image_mode(mode)
    if mode == "rgb":
        return target_pad(image if image.mode == "RGB" else to_rgb(image), size)
    return target_pad(image, size).convert("RGB")


def load_model_image(path: str, size: int, mode: str = "rgb") -> Image.Image:
    """:func:`model_image` of a file (read once, in the mode that needs it)."""
    check_image_mode(mode)
    if mode == "rgb":
        return target_pad(load_rgb(path), size)
    return target_pad(load_as_stored(path), size).convert("RGB")


def check_image_mode(mode: str) -> None:
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode must be one of {IMAGE_MODES}, not {mode!r}")


def normalise(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float, CLIP-normalised."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels_uint8.float() / 255.0 - mean) / std


class ImageStore:
    """Model-ready pixels by image key, read once and kept in memory (uint8) when ``cache`` is on.
    Images not in memory are decoded by ``workers`` threads (Pillow releases the GIL while decoding
    and resizing), so a batch of 1,024 paper-scale images does not wait on one core. ``mode``: where
    the conversion to RGB happens (:func:`model_image`); :meth:`for_model` takes it, and the image
    size, from a FashionBLIP-2 model or config, as every user of a trained model should."""

    def __init__(self, paths: dict[str, str], image_size: int, cache: bool = True, workers: int = 4, mode: str = "rgb"):
        check_image_mode(mode)
        self.paths = paths
        self.image_size = image_size
        self.cache = cache
        self.workers = workers
        self.mode = mode
        self._pixels: dict[str, torch.Tensor] = {}

    @classmethod
    def for_model(cls, paths: dict[str, str], model: Any, cache: bool = True, workers: int = 4) -> ImageStore:
        """A store preparing images as ``model`` (a FashionBLIP-2 model or its config) was trained:
        its vision encoder's image size and its ``image_mode``."""
        config = getattr(model, "config", model)
        size = config.blip2_config().vision_config.image_size
        return cls(paths, size, cache=cache, workers=workers, mode=config.image_mode)

    def __contains__(self, key: str) -> bool:
        return key in self.paths

    def _load(self, key: str) -> torch.Tensor:
        image = load_model_image(self.paths[key], self.image_size, self.mode)
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
