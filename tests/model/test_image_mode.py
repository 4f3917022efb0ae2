"""images.mode (a model's ``image_mode``): "rgb" converts a file to RGB before TargetPad, "sprc" after
the crop, as SPRC's and CLIP4Cir's ``targetpad_transform`` (docs/fidelity.md, row 7). Each mode
changes only where the conversion happens: an RGB file gives the same pixels in both, "rgb" is the
preprocessing as it was, and "sprc" is SPRC's transform pixel for pixel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fashionblip2.common.images import load_as_stored, load_rgb
from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from fashionblip2.model.configuration import tiny_blip2_config
from fashionblip2.model.processing import ImageStore, load_model_image, model_image
from tests.model.test_processing_and_tokenization import reference_targetpad

SIZE = 32
# Palette index 0 is not black: SPRC pads a palette image with index 0, so its bars take this colour.
PALETTE = [200, 10, 10, 0, 255, 0, 0, 0, 255, 255, 255, 0] + [0] * (256 * 3 - 12)


def sprc_targetpad_transform(image: Image.Image, size: int) -> Image.Image:
    """SPRC's preprocessing up to ToTensor, written with torchvision as its src/data_utils.py does
    (chunmeifeng/SPRC 2935a53, the same in ABaldrati/CLIP4Cir dfed9f7): the dataset's
    ``PIL.Image.open(path)`` goes through ``TargetPad(1.25)`` (``F.pad(image, [hp, vp, hp, vp], 0,
    'constant')``), ``Resize(size, BICUBIC)``, ``CenterCrop(size)`` and only then
    ``_convert_image_to_rgb`` (``image.convert("RGB")``)."""
    return reference_targetpad(image, size).convert("RGB")


def pixels(path, mode: str) -> np.ndarray:
    return np.asarray(load_model_image(str(path), SIZE, mode)).astype(int)


def today(path) -> np.ndarray:
    """The preprocessing before the switch: load_rgb, then TargetPad (torchvision's own ops)."""
    return np.asarray(reference_targetpad(load_rgb(path), SIZE)).astype(int)


def save(tmp_path, image: Image.Image, name: str) -> str:
    path = tmp_path / name
    image.save(path)
    return str(path)


def test_an_rgb_jpeg_gives_the_same_pixels_in_both_modes(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(60, 30), (30, 60), (40, 44)]:  # tall and wide (padded), nearly square (not)
        path = save(tmp_path, Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)), f"{shape}.jpg")
        assert Image.open(path).mode == "RGB"
        rgb, sprc = pixels(path, "rgb"), pixels(path, "sprc")
        assert np.array_equal(rgb, sprc)
        assert np.array_equal(rgb, today(path))
    # An 8-bit greyscale file too: padding and bicubic act band by band, so converting first or last agrees.
    gray = save(tmp_path, Image.fromarray(rng.integers(0, 256, (60, 30), dtype=np.uint8)), "gray.png")
    assert np.array_equal(pixels(gray, "rgb"), pixels(gray, "sprc"))


def palette_image(size=(30, 60), index=1) -> Image.Image:
    image = Image.new("P", size, index)
    image.putpalette(PALETTE)
    return image


def rgba_half_transparent() -> Image.Image:
    """Opaque blue on the left, fully transparent blue on the right."""
    image = Image.new("RGBA", (30, 60), (0, 0, 255, 255))
    image.paste((0, 0, 255, 0), (15, 0, 30, 60))
    return image


def sixteen_bit(value=30000) -> Image.Image:
    return Image.fromarray(np.full((60, 30), value, dtype=np.uint16))


def cmyk() -> Image.Image:
    return Image.new("CMYK", (30, 60), (0, 200, 200, 0))


# A 30 x 60 image is padded to 48 x 60 (9 columns each side), resized to 32 x 40 and cropped to 32 x 32:
# the bars are columns 0-5 and 26-31 of the output (nearest), bicubic blends columns 5-6 and 25-26.
PAD = np.r_[0:5, 27:32]  # bars in every mode
INSIDE = np.r_[8:24]  # the image in every mode (bicubic rings a column further)
FRINGE = set(range(0, 7)) | set(range(25, 32))


def test_a_palette_image_is_padded_with_index_0_under_sprc_and_black_under_rgb(tmp_path):
    path = save(tmp_path, palette_image(), "p.png")
    assert Image.open(path).mode == "P"
    rgb, sprc = pixels(path, "rgb"), pixels(path, "sprc")
    assert np.array_equal(rgb, today(path))  # rgb is the preprocessing as it was
    assert (rgb[:, PAD] == 0).all()  # black bars
    assert (sprc[:, PAD] == [200, 10, 10]).all()  # palette index 0's colour
    # The image itself (index 1, green) is the same in both; they differ in the bars (and the
    # bicubic fringe, under rgb, where bar and image meet) only.
    assert (rgb[:, INSIDE] == [0, 255, 0]).all() and (sprc[:, INSIDE] == [0, 255, 0]).all()
    assert set(np.where((rgb != sprc).any(axis=(0, 2)))[0]) == FRINGE
    # A palette is resized by its indices (PIL: nearest) under sprc: only palette colours come out.
    rng = np.random.default_rng(1)
    noisy = Image.fromarray(rng.integers(0, 4, (60, 30), dtype=np.uint8), "P")
    noisy.putpalette(PALETTE)
    path = save(tmp_path, noisy, "noisy.png")
    colours = {tuple(c) for c in pixels(path, "sprc").reshape(-1, 3)}
    assert colours <= {(200, 10, 10), (0, 255, 0), (0, 0, 255), (255, 255, 0)}
    assert len({tuple(c) for c in pixels(path, "rgb").reshape(-1, 3)}) > 50  # bicubic blends RGB colours


def test_transparency_is_black_under_sprc_and_white_under_rgb(tmp_path):
    path = save(tmp_path, rgba_half_transparent(), "a.png")
    rgb, sprc = pixels(path, "rgb"), pixels(path, "sprc")
    assert np.array_equal(rgb, today(path))
    opaque, transparent = np.r_[7:14], np.r_[18:25]
    assert (rgb[:, PAD] == 0).all() and (sprc[:, PAD] == 0).all()  # (0, 0, 0, 0) padding: black once alpha goes
    assert (rgb[:, opaque] == [0, 0, 255]).all() and (sprc[:, opaque] == [0, 0, 255]).all()
    assert (rgb[:, transparent] == 255).all()  # alpha over white
    # SPRC's: black, whatever colour the file stores under alpha 0 (blue here): PIL resizes RGBA
    # premultiplied, which zeroes it, then convert("RGB") drops alpha. A cut-out product on a
    # transparent background is on black under sprc, on white under rgb.
    assert (sprc[:, transparent] == 0).all()


def test_sixteen_bit_is_scaled_under_rgb_and_clipped_under_sprc(tmp_path):
    path = save(tmp_path, sixteen_bit(30000), "i16.png")
    assert Image.open(path).mode in ("I;16", "I")
    rgb, sprc = pixels(path, "rgb"), pixels(path, "sprc")
    assert np.array_equal(rgb, today(path))
    assert (rgb[:, INSIDE] == 117).all()  # 30000 / 257
    assert (sprc[:, INSIDE] == 255).all()  # PIL's conversion clips at 255
    assert (rgb[:, PAD] == 0).all() and (sprc[:, PAD] == 0).all()


def test_cmyk_is_padded_white_under_sprc(tmp_path):
    for name in ("c.jpg", "c.tif"):
        path = save(tmp_path, cmyk(), name)
        assert Image.open(path).mode == "CMYK"
        rgb, sprc = pixels(path, "rgb"), pixels(path, "sprc")
        assert np.array_equal(rgb, today(path))
        assert (rgb[:, PAD] == 0).all()
        assert (sprc[:, PAD] == 255).all()  # CMYK (0, 0, 0, 0) is white
        assert np.array_equal(rgb[:, INSIDE], sprc[:, INSIDE])  # the same colour conversion of the image


@pytest.mark.parametrize("kind", ["P", "P noise", "RGBA", "RGBA noise", "LA", "I;16", "CMYK", "L", "1", "RGB"])
def test_sprc_is_sprcs_transform_pixel_for_pixel(tmp_path, kind):
    rng = np.random.default_rng(len(kind))
    noise = {
        "P noise": lambda: Image.fromarray(rng.integers(0, 4, (60, 30), dtype=np.uint8), "P"),
        "RGBA noise": lambda: Image.fromarray(rng.integers(0, 256, (60, 30, 4), dtype=np.uint8), "RGBA"),
        "LA": lambda: Image.fromarray(rng.integers(0, 256, (60, 30, 2), dtype=np.uint8), "LA"),
        "L": lambda: Image.fromarray(rng.integers(0, 256, (30, 70), dtype=np.uint8)),
        "1": lambda: Image.fromarray(rng.integers(0, 2, (60, 30)).astype(bool)),
        "RGB": lambda: Image.fromarray(rng.integers(0, 256, (33, 80, 3), dtype=np.uint8)),
        "I;16": lambda: Image.fromarray(rng.integers(0, 400, (60, 30)).astype(np.uint16)),
    }
    fixed = {"P": palette_image, "RGBA": rgba_half_transparent, "CMYK": cmyk}
    image = noise[kind]() if kind in noise else fixed[kind]()
    if image.mode == "P":
        image.putpalette(PALETTE)
    path = save(tmp_path, image, "x.tif" if kind == "CMYK" else "x.png")
    theirs = np.asarray(sprc_targetpad_transform(Image.open(path), SIZE)).astype(int)
    assert np.array_equal(pixels(path, "sprc"), theirs)
    # ... and an image already open (the browser's uploads) gives the same.
    assert np.array_equal(np.asarray(model_image(load_as_stored(path), SIZE, "sprc")).astype(int), theirs)
    assert np.array_equal(np.asarray(model_image(load_as_stored(path), SIZE, "rgb")).astype(int), pixels(path, "rgb"))


def test_the_image_store_applies_its_mode(tmp_path):
    paths = {"p": save(tmp_path, palette_image(), "p.png"), "c": save(tmp_path, cmyk(), "c.jpg")}
    rgb, sprc = ImageStore(paths, SIZE).pixels(["p", "c"]), ImageStore(paths, SIZE, mode="sprc").pixels(["p", "c"])
    assert ImageStore(paths, SIZE).mode == "rgb"  # the default: the preprocessing as it was
    for i, key in enumerate(["p", "c"]):
        rows = [ImageStore({key: paths[key]}, SIZE, mode=m).pixels([key])[0] for m in ("rgb", "sprc")]
        assert torch.equal(rgb[i], rows[0]) and torch.equal(sprc[i], rows[1])
        assert not torch.equal(rgb[i], sprc[i])
    with pytest.raises(ValueError, match="image mode"):
        ImageStore(paths, SIZE, mode="cmyk")


def tiny_config(**kw) -> FashionBLIP2Config:
    return FashionBLIP2Config(blip2=tiny_blip2_config(image_size=SIZE), **kw)


def test_a_model_saved_with_mode_sprc_loads_with_it_and_its_store_follows(tmp_path):
    torch.manual_seed(0)
    model = FashionBLIP2(tiny_config(image_mode="sprc"))
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["image_mode"] == "sprc"
    loaded = FashionBLIP2.from_pretrained(tmp_path / "m")
    assert loaded.config.image_mode == "sprc"
    store = ImageStore.for_model({"p": save(tmp_path, palette_image(), "p.png")}, loaded, cache=False)
    assert (store.mode, store.image_size) == ("sprc", SIZE)
    assert ImageStore.for_model({}, loaded.config).mode == "sprc"  # a config does as well as a model
    # The mode changes no weight: the same seed builds the same model under either.
    torch.manual_seed(0)
    plain = FashionBLIP2(tiny_config())
    assert plain.config.image_mode == "rgb"
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values(), strict=True))

    # A config saved before the option (no key) loads as rgb, what its model was trained with.
    del saved["image_mode"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(saved))
    assert FashionBLIP2.from_pretrained(tmp_path / "m").config.image_mode == "rgb"
    with pytest.raises(ValueError, match="image_mode"):
        tiny_config(image_mode="RGB")


def test_a_model_built_from_a_backbone_takes_the_mode(tmp_path):
    """Stage 1 builds from a BLIP-2 folder with the run's settings (fashionblip2.training.runs.build_model)."""
    from transformers import Blip2ForImageTextRetrieval

    Blip2ForImageTextRetrieval(tiny_blip2_config(image_size=SIZE)).save_pretrained(tmp_path / "blip2")
    model = FashionBLIP2.from_pretrained(tmp_path / "blip2", image_mode="sprc")
    assert model.config.image_mode == "sprc"
    assert FashionBLIP2.from_pretrained(tmp_path / "blip2").config.image_mode == "rgb"
