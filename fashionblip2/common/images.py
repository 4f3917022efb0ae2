"""Opening images the way every stage of the workflow does, and checking them once up front."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

VERIFY_LEVELS = ("exists", "header", "decode")
# How a model's images become RGB (config images.mode, carried by a FashionBLIP-2 model's config as
# image_mode; fashionblip2.model.processing applies it): "rgb" converts the file to 8-bit RGB first
# (load_rgb), then pads and resizes; "sprc" pads and resizes the image in the mode its file stores
# and converts to RGB last, as SPRC's and CLIP4Cir's targetpad_transform do. Identical for RGB files.
IMAGE_MODES = ("rgb", "sprc")


@dataclass(frozen=True)
class ImageCheck:
    """What a check of one image file found. ``problem`` is set when the image cannot be used."""

    width: int | None = None
    height: int | None = None
    mode: str | None = None
    problem: str | None = None


def check_image(path: str | os.PathLike[str], level: str = "decode") -> ImageCheck:
    """Check one image file.

    ``exists`` only stats the file; ``header`` also reads size and mode; ``decode`` decodes the
    whole image, which is the only level that finds truncated files.
    """
    if level not in VERIFY_LEVELS:
        raise ValueError(f"unknown image check level {level!r}; expected one of {VERIFY_LEVELS}")
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return ImageCheck(problem="image missing")
    except OSError as e:
        return ImageCheck(problem=f"image unreadable: {e.strerror}")
    if size == 0:
        return ImageCheck(problem="image is an empty file")
    if level == "exists":
        return ImageCheck()
    try:
        with Image.open(path) as img:
            width, height, mode = img.width, img.height, img.mode
            if level == "decode":
                img.load()
    except UnidentifiedImageError:
        return ImageCheck(problem="not an image: the format is not recognised")
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated and corrupt data as OSError ("image file is truncated ...").
        return ImageCheck(problem=f"image is truncated or corrupt: {e}")
    return ImageCheck(width=width, height=height, mode=mode)


def load_rgb(path: str | os.PathLike[str] | IO[bytes]) -> Image.Image:
    """Open an image as RGB. Grayscale, palette, CMYK and alpha images are converted (alpha over white);
    16-bit and float images are scaled to 8 bits (PIL's own conversion clips them: mostly white)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def load_as_stored(path: str | os.PathLike[str] | IO[bytes]) -> Image.Image:
    """Open an image in the mode its file stores (palette, CMYK, 16-bit, alpha, ... kept), decoded
    whole: what ``PIL.Image.open`` gives SPRC's and CLIP4Cir's preprocessing."""
    with Image.open(path) as img:
        img.load()
        return img.copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """An image as 8-bit RGB, as :func:`load_rgb` converts it (a copy when it is RGB already)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_rgb(img)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """A 16-bit (I;16*, or I holding 16-bit values) or float image as 8-bit RGB, by scaling its range:
    16-bit values by 1/257 (65535 -> 255), floats in [0, 1] by 255."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and values.size and values.max() <= 1.0:
        scaled = values * 255.0
    elif img.mode == "F":
        scaled = values
    else:  # 16 bits per sample, whatever PIL calls the mode
        scaled = values / 257.0
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return gray.convert("RGB")
