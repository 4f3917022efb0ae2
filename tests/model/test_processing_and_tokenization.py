"""Tokenizer, image preprocessing and the triplet readers used by training and evaluation."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fashionblip2.common.issues import InputReport
from fashionblip2.datasets.triplets import Triplets, pretraining_pairs, read_facap, read_fashioniq_split, read_gallery
from fashionblip2.model.processing import (
    ImageStore,
    normalise,
    target_pad,
)
from fashionblip2.model.tokenization import load_tokenizer, tokenize, train_word_level

TEXTS = ["A red dress with long sleeves.", "A blue shirt, short sleeves", "is darker and has a v-neck"] * 3


def test_trained_tokenizer_gives_cls_first_pads_and_round_trips(tmp_path):
    tok = train_word_level(TEXTS, vocab_size=120, max_length=16)
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    ids, mask = tokenize(again, ["a red dress", "a blue shirt with long sleeves and a v-neck"], 16)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert (ids[:, 0] == again.cls_token_id).all()  # the Q-Former text path reads position 0
    assert mask[0].sum() < mask[1].sum() and ids[0, -1] == again.pad_token_id
    assert again.decode(ids[0], skip_special_tokens=True) == "a red dress"
    # The same texts give the same vocabulary.
    assert train_word_level(list(reversed(TEXTS)), 120, 16).get_vocab() == tok.get_vocab()


def test_a_missing_tokenizer_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_target_pad_pads_only_long_images():
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    padded = np.asarray(target_pad(wide, 64))
    assert padded.shape == (64, 64, 3)
    assert padded[0, 32].tolist() == [0, 0, 0] and padded[32, 32].tolist() == [255, 0, 0]  # black bars, image centred
    almost_square = Image.new("RGB", (110, 100), (0, 255, 0))
    assert np.asarray(target_pad(almost_square, 64))[0, 32].tolist() == [0, 255, 0]  # ratio 1.1: cropped, not padded


def reference_targetpad(image: Image.Image, size: int) -> Image.Image:
    """The baselines' rule written with torchvision's own transforms (TargetPad as CLIP4Cir/SPRC)."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize
    from torchvision.transforms import functional as tvf

    def pad(img):
        w, h = img.size
        if max(w, h) / min(w, h) < 1.25:
            return img
        scaled = max(w, h) / 1.25
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        return tvf.pad(img, [hp, vp, hp, vp], 0, "constant")

    return Compose([pad, Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size)])(image)


@pytest.mark.parametrize("shape", [(100, 200), (200, 100), (120, 100), (125, 100), (64, 301), (333, 77), (50, 50)])
def test_target_pad_gives_the_baselines_pixels(shape):
    """A 1:2 image is padded to 1:1.25 (not to a square), then resized and centre-cropped: the pixels
    CLIP4Cir's and SPRC's preprocessing gives, for tall, wide, nearly square and square images."""
    rng = np.random.default_rng(sum(shape))
    image = Image.fromarray(rng.integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8))
    ours, theirs = np.asarray(target_pad(image, 48)), np.asarray(reference_targetpad(image, 48))
    assert ours.shape == theirs.shape == (48, 48, 3)
    assert np.array_equal(ours, theirs)
    if shape == (100, 200):  # tall 1:2 -> 160 x 200: 30 black columns each side, about 9 of 48 once resized
        assert (ours[:, :7] == 0).all() and (ours[:, 8:40] != 0).any(axis=2).mean() > 0.9


def test_image_store_normalises_and_caches(tmp_path):
    Image.new("RGB", (50, 50), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("L", (50, 80), 0).save(tmp_path / "black.png")  # grey-scale, not square: converted
    store = ImageStore({"w": str(tmp_path / "white.png"), "b": str(tmp_path / "black.png")}, 32)
    pixels = store.pixels(["w", "b", "w"])
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    assert torch.allclose(pixels[0], normalise(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8))[0])
    (tmp_path / "white.png").unlink()
    assert torch.equal(store.pixels(["w"])[0], pixels[0])  # read once


def write_facap(root, triplets, captions, category="dress"):
    (root / "cir_triplets").mkdir(parents=True)
    (root / "image_captions").mkdir(parents=True)
    (root / "cir_triplets" / f"{category}_train_triplets.json").write_text(json.dumps(triplets))
    (root / "image_captions" / f"{category}_train_captions.json").write_text(json.dumps(captions))


def test_read_facap_resolves_images_through_the_manifest_and_counts_skips(tmp_path):
    manifest = pd.DataFrame(
        {"image_id": ["fashion200k:a", "fashion200k:b", "deepfashion_mm:c"], "source": ["fashion200k"] * 2 + ["x"]}
    )
    write_facap(
        tmp_path,
        [
            {"candidate": "a", "target": "b", "captions": ["is blue instead of red"]},
            {"candidate": "a", "target": "gone", "captions": ["missing image"]},
            {"candidate": "b", "target": "c", "captions": ["c has no caption"]},
        ],
        {"b": "A blue dress.", "a": "A red dress."},
    )
    report = InputReport()
    data = read_facap(tmp_path, manifest, report)
    assert (data.reference, data.target, data.texts) == (
        ["fashion200k:a"],
        ["fashion200k:b"],
        [["is blue instead of red"]],
    )
    assert data.target_caption == ["A blue dress."] and data.skipped == {"facap": 2}
    reasons = sorted(i.reason for i in report.issues)
    assert reasons == ["image not in the manifest: gone", "target image has no caption"]


def test_facap_fractions_are_seeded_and_nested():
    n = 40
    data = Triplets([f"r{i}" for i in range(n)], [f"t{i}" for i in range(n)], [["x"]] * n, ["dress"] * n, ["c"] * n)
    quarter, half = data.fraction(0.25, seed=1), data.fraction(0.5, seed=1)
    assert len(quarter) == 10 and len(half) == 20
    assert set(quarter.reference) < set(half.reference)
    assert data.fraction(0.25, seed=1).reference == quarter.reference != data.fraction(0.25, seed=2).reference
    with pytest.raises(ValueError):
        data.fraction(0, seed=1)


def test_fashioniq_triplets_and_gallery_skip_missing_images_and_count_them(tiny_world):
    world, _ = tiny_world
    root = world / "fashioniq"
    captions = json.loads((root / "captions/cap.dress.val.json").read_text())
    split = json.loads((root / "image_splits/split.dress.val.json").read_text())
    available = {f"fashioniq:dress:{a}" for a in split} - {f"fashioniq:dress:{captions[0]['target']}"}
    report = InputReport()
    data = read_fashioniq_split(root, "val", ["dress"], available, report)
    lost = sum(
        1
        for c in captions
        if f"fashioniq:dress:{c['target']}" not in available or f"fashioniq:dress:{c['candidate']}" not in available
    )
    assert len(data) == len(captions) - lost and data.skipped == {"image missing": lost} and lost >= 1
    assert report.count("skipped") == lost
    gallery_report = InputReport()
    gallery = read_gallery(root, "dress", "val", available, gallery_report)
    assert len(gallery) == len(split) - 1 and gallery_report.count("skipped") == 1
    # Evaluation text: the two captions joined; training text: one of the four randomised forms.
    assert data.training_text(0, None, randomise=False, cleanup="none").count(" and ") >= 1
    forms = {data.training_text(0, random.Random(s), randomise=True, cleanup="none") for s in range(50)}
    assert len(forms) >= 3


def test_pretraining_pairs_leave_fashioniq_and_empty_texts_out():
    manifest = pd.DataFrame(
        {
            "image_id": ["f:1", "f:2", "fashioniq:dress:3", "d:4"],
            "source": ["fashion200k", "fashion200k", "fashioniq", "deepfashion_mm"],
            "product_text": ["red dress", "", "val image", None],
        }
    )
    assert pretraining_pairs(manifest) == (["f:1"], ["red dress"])
