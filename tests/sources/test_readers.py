"""Readers on good and bad files. Every bad-input case of the ground-floor issue has a test here:
missing / zero-byte / truncated / non-RGB images, label lines with missing fields, attribute codes
out of range, FashionIQ entries without target, and the strict switch that turns skips into errors."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashionblip2.common.images import check_image, load_rgb
from fashionblip2.common.issues import BadInputError, InputReport
from fashionblip2.sources import (
    check_triplet_images,
    read_catalogue,
    read_deepfashion,
    read_fashion200k,
    read_fashioniq_images,
    read_fashioniq_triplets,
)

# --- Fashion200k --------------------------------------------------------------------------------


def test_fashion200k_line_with_missing_fields_is_skipped_with_file_and_line(tiny_world):
    world, _ = tiny_world
    labels = world / "fashion200k/labels/skirt_train_detect_all.txt"
    lines = labels.read_text().splitlines()
    broken = lines[0].split("\t")[0]
    lines[0] = broken  # path only: score and description lost
    lines.insert(1, lines[1])  # the same image listed twice
    labels.write_text("\n".join(lines) + "\n")
    report = InputReport()
    records = read_fashion200k(world / "fashion200k", report)
    skipped = report.to_frame()
    assert list(skipped.line) == [1, 2] or list(skipped.line) == [1, 3]
    assert skipped.file.unique().tolist() == ["labels/skirt_train_detect_all.txt"]
    assert "missing fields" in skipped.reason.iloc[0] and "duplicate" in skipped.reason.iloc[1]
    assert all(r.image_id != f"fashion200k:{broken.rsplit('/', 1)[1].removesuffix('.jpeg')}" for r in records)


def test_fashion200k_strict_mode_stops_at_the_bad_line(tiny_world):
    world, _ = tiny_world
    labels = world / "fashion200k/labels/top_test_detect_all.txt"
    labels.write_text(labels.read_text() + "women/tops/x/1/1_0.jpeg\t0.5\n")
    n = len(labels.read_text().splitlines())
    with pytest.raises(BadInputError, match=rf"labels/top_test_detect_all.txt:{n}: label line has missing fields"):
        read_fashion200k(world / "fashion200k", InputReport(strict=True))


def test_fashion200k_wrong_root_is_a_user_error(tmp_path):
    with pytest.raises(BadInputError, match="sources.fashion200k.root"):
        read_fashion200k(tmp_path, InputReport())


# --- DeepFashion-MultiModal -----------------------------------------------------------------------


def test_deepfashion_code_out_of_range_drops_that_line_but_keeps_the_image(tiny_world):
    world, _ = tiny_world
    shape = world / "deepfashion_mm/labels/shape/shape_anno_all.txt"
    lines = shape.read_text().splitlines()
    name, *codes = lines[0].split()
    codes[9] = "3"  # neckline 3 is not defined by the dataset
    lines[0] = " ".join([name, *codes])
    codes2 = lines[1].split()
    lines[1] = " ".join(codes2[:5])  # missing fields
    shape.write_text("\n".join(lines) + "\n")
    report = InputReport()
    records = {r.path.rsplit("/", 1)[1]: r for r in read_deepfashion(world / "deepfashion_mm", report)}
    issues = report.to_frame().set_index("line")
    assert "attribute code out of range: neckline=3" in issues.loc[1, "reason"]
    assert "missing fields" in issues.loc[2, "reason"]
    assert set(issues.file) == {"labels/shape/shape_anno_all.txt"}
    kept = records[name]
    assert "neckline" not in kept.attributes and "sleeve_length" not in kept.attributes
    assert any(k.endswith("_fabric") for k in kept.attributes)  # the texture files still apply


def test_deepfashion_fabric_code_out_of_range_and_non_integer(tiny_world):
    world, _ = tiny_world
    fabric = world / "deepfashion_mm/labels/texture/fabric_ann.txt"
    lines = fabric.read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 3)[0] + " 1 9 7"
    lines[1] = lines[1].rsplit(" ", 3)[0] + " 1 x 7"
    fabric.write_text("\n".join(lines) + "\n")
    report = InputReport()
    read_deepfashion(world / "deepfashion_mm", report)
    reasons = report.to_frame().reason.tolist()
    assert reasons == ["attribute code out of range: lower_fabric=9", "label line has a non-integer code: 1 x 7"]


def test_deepfashion_broken_captions_and_strange_names_are_counted(tiny_world):
    world, _ = tiny_world
    (world / "deepfashion_mm/captions.json").write_text('{"a.jpg": "x",\n oops}')
    Image.new("RGB", (8, 8)).save(world / "deepfashion_mm/images/holiday_photo.jpg")
    report = InputReport()
    records = read_deepfashion(world / "deepfashion_mm", report)
    frame = report.to_frame()
    assert "unrecognised file name" in frame.reason.iloc[0]
    bad_json = frame[frame.file == "captions.json"].iloc[0]
    assert "not valid JSON" in bad_json.reason and bad_json.line == 2
    assert records and all(r.product_text == "" for r in records)


# --- FashionIQ ------------------------------------------------------------------------------------


def test_fashioniq_entry_without_target_is_skipped_and_counted(tiny_world):
    world, _ = tiny_world
    path = world / "fashioniq/captions/cap.dress.train.json"
    rows = json.loads(path.read_text())
    del rows[1]["target"]
    rows[2]["captions"] = []
    path.write_text(json.dumps(rows, indent=4))
    report = InputReport()
    triplets = read_fashioniq_triplets(world / "fashioniq", report, categories=["dress"], splits=["train"])
    assert len(triplets) == len(rows) - 2
    frame = report.to_frame()
    assert frame.reason.tolist() == ["entry without target", "entry without captions"]
    assert frame.record.iloc[0].startswith("entry 1 (") and frame.file.iloc[0] == "captions/cap.dress.train.json"
    text = path.read_text().splitlines()
    assert frame.line.tolist() == [i + 1 for i, t in enumerate(text) if t == "    {"][1:3]
    with pytest.raises(BadInputError, match=r"cap.dress.train.json:\d+: entry without target"):
        read_fashioniq_triplets(world / "fashioniq", InputReport(strict=True), categories=["dress"], splits=["train"])


def test_real_fashioniq_train_has_18000_triplets_over_25136_images(shared_fashioniq):
    report = InputReport()
    triplets = read_fashioniq_triplets(shared_fashioniq, report, splits=["train"])
    assert report.issues == []
    assert len(triplets) == 18_000
    assert triplets.groupby("category").size().to_dict() == {"dress": 5985, "shirt": 5988, "toptee": 6027}
    assert len(set(triplets.candidate) | set(triplets.target)) == 25_136
    val = read_fashioniq_triplets(shared_fashioniq, report, splits=["val"])
    assert len(val) == 6_016


def test_real_fashioniq_without_images_reports_every_missing_image(shared_fashioniq):
    """The shared copy has annotations but no images: a mirror missing everything must not crash."""
    report = InputReport()
    images = read_fashioniq_images(shared_fashioniq, report, splits=["val"])
    assert [sum(r.category == c for r in images) for c in ("dress", "shirt", "toptee")] == [3817, 6346, 5373]
    triplets = read_fashioniq_triplets(shared_fashioniq, report, splits=["train"])
    kept = check_triplet_images(triplets, available=set(), report=report)
    assert kept.empty
    missing = report.to_frame()
    assert missing.record.nunique() == 25_136  # one line per (image, caption file)
    assert not missing.duplicated(["record", "file"]).any()
    first = missing.iloc[0]  # points at the first entry of its caption file that uses the image
    lines = (shared_fashioniq / first.file).read_text().splitlines()
    assert first.record in lines[first.line + 1] or first.record in lines[first.line]
    assert missing.reason.str.match(r"triplet image missing: \d+ triplet\(s\) skipped").all()
    with pytest.raises(BadInputError, match="triplet image missing"):
        check_triplet_images(triplets, available=set(), report=InputReport(strict=True))


def test_real_fashioniq_test_split_has_no_targets(shared_fashioniq):
    report = InputReport()
    assert read_fashioniq_triplets(shared_fashioniq, report, splits=["test"]).empty
    assert report.count("skipped") == 6_118
    assert set(report.to_frame().reason) == {"entry without target"}


# --- images ---------------------------------------------------------------------------------------


def test_image_checks(tmp_path):
    good = tmp_path / "good.jpg"
    Image.effect_noise((256, 256), 60).convert("RGB").save(good)  # big enough that half keeps the header
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("<html>not found</html>")
    gray = tmp_path / "gray.png"
    Image.new("L", (16, 12), 128).save(gray)

    assert check_image(good) == check_image(good, "decode")
    assert check_image(good).problem is None and check_image(good).mode == "RGB"
    assert check_image(tmp_path / "nope.png").problem == "image missing"
    assert check_image(empty).problem == "image is an empty file"
    assert check_image(truncated, "decode").problem.startswith("image is truncated or corrupt")
    assert check_image(truncated, "header").problem is None  # only a full decode finds truncation
    assert check_image(text).problem.startswith("not an image")
    g = check_image(gray)
    assert g.problem is None and (g.width, g.height, g.mode) == (16, 12, "L")


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16"])
def test_load_rgb_converts_every_mode(tmp_path, mode):
    path = tmp_path / f"img.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new(mode, (10, 6)).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (10, 6)


def test_a_16_bit_image_keeps_its_contrast(tmp_path):
    """A real 16-bit PNG (a grey ramp over the full range): scaled to 8 bits, not clipped to white."""
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp.astype(np.uint16)).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    pixels = np.asarray(load_rgb(path))
    assert pixels.min() == 0 and pixels.max() == 255 and abs(pixels.mean() - 127.5) < 2
    assert (pixels[..., 0] == pixels[..., 2]).all() and np.all(np.diff(pixels[0, :, 0].astype(int)) >= 0)


def test_rgba_is_composited_over_white(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


# --- a user's catalogue -------------------------------------------------------------------------


def write_catalogue(tmp_path, rows, name="catalogue.csv"):
    (tmp_path / "img").mkdir(exist_ok=True)
    for r in rows:
        if r.get("image_path"):
            Image.new("RGB", (8, 8)).save(tmp_path / r["image_path"])
    frame = pd.DataFrame(rows)
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def test_catalogue_csv_is_read_with_relative_paths_and_attributes(tmp_path):
    path = write_catalogue(
        tmp_path,
        [
            {
                "image_path": "img/a1.jpg",
                "category": "Dress",
                "item_id": "A",
                "product_text": "red  silk dress",
                "attributes": '{"colour": "red"}',
                "attr_fabric": "silk",
            },
            {
                "image_path": "img/a2.jpg",
                "category": "Dress",
                "item_id": "A",
                "product_text": "",
                "attributes": "",
                "attr_fabric": "",
            },
        ],
    )
    report = InputReport()
    records = read_catalogue(path, report)
    assert report.issues == []
    assert [r.image_id for r in records] == ["catalogue:img/a1", "catalogue:img/a2"]
    assert records[0].path == str(tmp_path / "img/a1.jpg") and records[0].category == "dress"
    assert records[0].attributes == {"colour": "red", "fabric": "silk"} and records[0].product_text == "red silk dress"
    assert records[1].attributes == {} and records[1].item_id == "A" and records[1].split == "train"


def test_catalogue_problems(tmp_path):
    path = write_catalogue(
        tmp_path,
        [
            {"image_path": "img/a.jpg", "category": "top", "item_id": "1", "attributes": "[1, 2]"},
            {"image_path": "img/b.jpg", "category": "", "item_id": "2", "attributes": ""},
        ],
    )
    report = InputReport()
    records = read_catalogue(path, report)
    frame = report.to_frame()
    assert len(records) == 1 and records[0].attributes == {}
    assert frame[["line", "action"]].values.tolist() == [[2, "repaired"], [3, "skipped"]]
    assert "missing fields: category" in frame.reason.iloc[1]
    with pytest.raises(BadInputError, match=r"catalogue.csv:3: row has missing fields"):
        read_catalogue(path, InputReport(strict=True))


def test_a_catalogue_not_in_its_encoding_is_named_with_its_line(tmp_path):
    rows = [{"image_path": "img/a.jpg", "category": "dress", "item_id": "1"}] * 2
    path = write_catalogue(tmp_path, rows + [{"image_path": "img/é.jpg", "category": "robe", "item_id": "3"}])
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(BadInputError, match=r"catalogue.csv, line 4: not utf-8 text \(byte 0xe9 at column 5\)"):
        read_catalogue(path, InputReport())
    records = read_catalogue(path, InputReport(), encoding="latin-1")
    assert records[-1].image_id == "catalogue:img/é"


def test_catalogue_without_a_required_column_is_a_user_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("path,category,item_id\nx.jpg,dress,1\n")
    with pytest.raises(BadInputError, match="lacks required column.*image_path"):
        read_catalogue(path, InputReport())


def test_catalogue_parquet(tmp_path):
    path = write_catalogue(tmp_path, [{"image_path": "img/p.jpg", "category": "pants", "item_id": "9"}], "c.parquet")
    (record,) = read_catalogue(path, InputReport(), source="shop")
    assert record.image_id == "shop:img/p" and record.source == "shop"
