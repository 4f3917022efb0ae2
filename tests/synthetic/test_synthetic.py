import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fashionblip2.common.issues import InputReport
from fashionblip2.sources import (
    read_deepfashion,
    read_fashion200k,
    read_fashioniq_images,
    read_fashioniq_triplets,
)
from fashionblip2.synthetic import WorldSpec, generate_world
from fashionblip2.synthetic.attributes import Garment, mutate_garment, sample_garment, stable_rng
from tests.conftest import TINY_SPEC


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path, tiny_world_session):
    world, truth = tiny_world_session
    generate_world(WorldSpec.from_dict(TINY_SPEC), tmp_path / "again", tmp_path / "truth.parquet", progress=False)
    assert tree_digest(tmp_path / "again") == tree_digest(world)
    assert (tmp_path / "truth.parquet").read_bytes() == truth.read_bytes()


def test_another_seed_gives_another_world(tmp_path, tiny_world_session):
    world, _ = tiny_world_session
    generate_world(
        WorldSpec.from_dict({**TINY_SPEC, "seed": 4}), tmp_path / "w", tmp_path / "t.parquet", progress=False
    )
    images_a = {v for k, v in tree_digest(world).items() if k.endswith((".png", ".jpg", ".jpeg"))}
    images_b = {v for k, v in tree_digest(tmp_path / "w").items() if k.endswith((".png", ".jpg", ".jpeg"))}
    assert images_a and images_b and not images_a & images_b


def test_the_three_trees_are_in_the_real_layouts(tiny_world_session):
    world, _ = tiny_world_session
    for cat in ("dress", "jacket", "pants", "skirt", "top"):
        for split in ("train", "test"):
            assert (world / f"fashion200k/labels/{cat}_{split}_detect_all.txt").exists()
    line = (world / "fashion200k/labels/dress_train_detect_all.txt").read_text().splitlines()[0]
    path, score, description = line.split("\t")
    parts = Path(path).parts
    assert parts[:2] == ("women", "dresses") and len(parts) == 5 and parts[4] == f"{parts[3]}_{parts[4].split('_')[1]}"
    assert 0 <= float(score) <= 1 and description == description.lower() and description.strip()
    assert (world / "fashion200k" / path).exists()

    df = world / "deepfashion_mm"
    shape_line = (df / "labels/shape/shape_anno_all.txt").read_text().splitlines()[0].split()
    assert len(shape_line) == 13 and shape_line[0].endswith(".jpg")
    assert (df / "images" / shape_line[0]).exists()
    for name in ("fabric_ann.txt", "pattern_ann.txt"):
        assert len((df / "labels/texture" / name).read_text().splitlines()[0].split()) == 4
    captions = json.loads((df / "captions.json").read_text())
    assert all(isinstance(v, str) and v for v in captions.values())

    fiq = world / "fashioniq"
    for cat in ("dress", "shirt", "toptee"):
        for split in ("train", "val", "test"):
            names = json.loads((fiq / f"image_splits/split.{cat}.{split}.json").read_text())
            assert all((fiq / "images" / f"{n}.png").exists() for n in names)
            rows = json.loads((fiq / f"captions/cap.{cat}.{split}.json").read_text())
            for row in rows:
                assert len(row["captions"]) == 2 and row["candidate"] in names
                # The public test split hides targets; train and val have them, inside the split.
                assert ("target" in row) == (split != "test")
                assert split == "test" or row["target"] in names


def test_trees_round_trip_through_the_readers(tiny_world_session):
    world, truth_path = tiny_world_session
    truth = pd.read_parquet(truth_path)
    report = InputReport(strict=True)
    f200k = read_fashion200k(world / "fashion200k", report)
    dfmm = read_deepfashion(world / "deepfashion_mm", report)
    fiq = read_fashioniq_images(world / "fashioniq", report)
    triplets = read_fashioniq_triplets(world / "fashioniq", report)
    assert report.issues == []
    assert len(f200k) == (truth.source == "fashion200k").sum()
    assert len(dfmm) == (truth.source == "deepfashion_mm").sum()
    assert len(fiq) == (truth.source == "fashioniq").sum()
    assert len(triplets) == 3 * (
        TINY_SPEC["fashioniq"]["triplets"]["train"] + TINY_SPEC["fashioniq"]["triplets"]["val"]
    )

    by_path = truth.set_index("path")
    for r in f200k:
        t = by_path.loc[str(Path(r.path).relative_to(world))]
        assert r.item_id == t.item_id and r.view == str(t.view)
        assert r.category == {"dress": "dress", "jacket": "jacket", "pants": "pants", "skirt": "skirt"}.get(
            t.garment, "top"
        )
    sleeve = {"sleeveless": "sleeveless", "short": "short-sleeve", "elbow": "medium-sleeve", "long": "long-sleeve"}
    for r in dfmm:
        t = by_path.loc[str(Path(r.path).relative_to(world))]
        assert r.item_id == t.item_id
        if pd.notna(t.sleeve) and t.garment != "jacket":
            assert r.attributes["sleeve_length"] == sleeve[t.sleeve]
        assert r.product_text  # missing_caption is 0 in the tiny spec


def test_views_of_an_item_share_attributes_and_differ_in_pixels(tiny_world_session):
    world, truth_path = tiny_world_session
    truth = pd.read_parquet(truth_path)
    multi = truth[truth.source == "fashion200k"].groupby("item_id").filter(lambda g: len(g) > 1)
    item = multi.groupby("item_id")
    assert len(item) > 0
    for _, g in item:
        assert g[["garment", "colour", "pattern", "length", "fit"]].nunique().max() == 1
        a, b = (Image.open(world / p).tobytes() for p in g.path.iloc[:2])
        assert a != b


def test_mutated_garments_differ_in_the_asked_number_of_attributes():
    rng = stable_rng(0, "t")
    for garment in ("dress", "pants", "shirt"):
        base = sample_garment(rng, garment)
        for n in (1, 2, 3):
            other = mutate_garment(rng, base, n)
            assert isinstance(other, Garment)
            assert len([d for d in base.differences(other) if d != "colour2"]) == n


def test_generation_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    precious = tmp_path / "my_data"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a generated synthetic world"):
        generate_world(WorldSpec.from_dict(TINY_SPEC), precious, tmp_path / "t.parquet", progress=False)
    assert (precious / "keep.txt").read_text() == "mine"


def test_a_failed_generation_leaves_no_tree(tmp_path, monkeypatch):
    import fashionblip2.synthetic.world as world_module

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(world_module, "_write_fashioniq", boom)
    with pytest.raises(RuntimeError):
        generate_world(WorldSpec.from_dict(TINY_SPEC), tmp_path / "world", tmp_path / "t.parquet", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_spec_keys_are_refused():
    with pytest.raises(ValueError, match="unknown keys"):
        WorldSpec.from_dict({"sed": 1})


def test_planted_leaks_are_transformed_copies_of_fashioniq_val_images_recorded_in_the_truth(tiny_world_session):
    world, truth_path = tiny_world_session
    truth = pd.read_parquet(truth_path)
    planted = truth[truth.planted_from != ""]
    assert len(planted) == TINY_SPEC["planted_leaks"] > 0 and set(planted.source) == {"fashion200k"}
    assert planted.planted_transform.tolist() == [
        ("resize", "crop", "reencode", "recolour")[k % 4] for k in range(len(planted))
    ]
    splits = [world / f"fashioniq/image_splits/split.{c}.val.json" for c in ("dress", "shirt", "toptee")]
    val = {asin for split in splits for asin in json.loads(split.read_text())}
    labels = "".join(p.read_text() for p in (world / "fashion200k/labels").glob("*.txt"))
    originals = truth.set_index("path")
    for r in planted.itertuples():
        assert Path(r.planted_from).stem in val and r.item_id not in set(truth[truth.planted_from == ""].item_id)
        assert str(Path(r.path).relative_to("fashion200k")) in labels  # listed, so the manifest reads it
        original = originals.loc[r.planted_from]
        assert (original.garment, original.colour, original.pattern) == (r.garment, r.colour, r.pattern)
        copy, source = Image.open(world / r.path), Image.open(world / r.planted_from)
        assert copy.format == "JPEG" and copy.tobytes() != source.convert("RGB").tobytes()
        assert (copy.size != source.size) == (r.planted_transform == "resize")
    assert (truth[truth.planted_from == ""].planted_transform == "").all()


def test_planting_more_leaks_than_val_images_is_refused(tmp_path):
    spec = WorldSpec.from_dict({**TINY_SPEC, "planted_leaks": 10_000})
    with pytest.raises(ValueError, match="planted_leaks is 10000"):
        generate_world(spec, tmp_path / "w", tmp_path / "t.parquet", progress=False)
