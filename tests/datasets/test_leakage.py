"""The leakage check's three levels on small made-up images and vectors (thresholds inclusive), the
reference = target check inside FACap, and which triplets a drop removes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashionblip2.datasets.leakage import (
    ImageSet,
    Thresholds,
    claim_line,
    cosine_pairs,
    drop_leaked,
    exact_pairs,
    file_digests,
    hamming_distance,
    hamming_pairs,
    heldout_matches,
    level_counts,
    perceptual_hash,
    reference_target_matches,
    triplets_touching,
)
from fashionblip2.pairing.embedding_file import EmbeddingFile

REPO = Path(__file__).resolve().parents[2]


def picture(seed: int, size: int = 96) -> Image.Image:
    """A textured picture (smooth random field plus a few rectangles): something a hash can tell apart."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    px = np.asarray(img).copy()
    for _ in range(3):
        x0, y0 = rng.integers(0, size - 20, size=2)
        px[y0 : y0 + 20, x0 : x0 + 20] = rng.integers(0, 256, size=3)
    return Image.fromarray(px, "RGB")


def save(img: Image.Image, path, fmt: str = "PNG", quality: int = 90) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    path.write_bytes(buf.getvalue())
    return str(path)


def test_exact_level_is_the_file_bytes(tmp_path):
    a = save(picture(0), tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    b = save(picture(0), tmp_path / "b.jpg", "JPEG")  # the same picture, other bytes
    digests = file_digests([a, str(tmp_path / "copy.png"), b])
    assert digests[0] == digests[1] != digests[2]
    i, j = exact_pairs(digests[[0, 2]], digests[[1, 1, 2]])
    assert i.tolist() == [0, 0, 1] and j.tolist() == [0, 1, 2]


def test_the_perceptual_hash_survives_resize_reencode_and_recolour_but_tells_pictures_apart(tmp_path):
    original = picture(1)
    base = perceptual_hash(save(original, tmp_path / "o.png"))
    resized = perceptual_hash(save(original.resize((60, 60), Image.Resampling.BICUBIC), tmp_path / "r.png"))
    reencoded = perceptual_hash(save(original, tmp_path / "q.jpg", "JPEG", quality=40))
    tinted = np.clip(np.asarray(original, float) * [1.06, 0.95, 1.0], 0, 255).astype(np.uint8)
    recoloured = perceptual_hash(save(Image.fromarray(tinted, "RGB"), tmp_path / "c.png"))
    others = [perceptual_hash(save(picture(s), tmp_path / f"x{s}.png")) for s in range(2, 8)]
    h = np.array([base, resized, reencoded, recoloured, *others], dtype=np.uint64)
    d = hamming_distance(h[0], h[1:])
    assert d[:3].max() <= 4, d
    assert d[3:].min() > 12, d


def test_hamming_threshold_is_inclusive_and_blocks_do_not_matter():
    a = np.array([0b0, 0b111, 0b1111, 2**64 - 1], dtype=np.uint64)
    b = np.array([0b0], dtype=np.uint64)
    i, j, d = hamming_pairs(a, b, 3)
    assert i.tolist() == [0, 1] and j.tolist() == [0, 0] and d.tolist() == [0, 3]
    assert hamming_pairs(a, b, 64)[2].tolist() == [0, 3, 4, 64]
    for block in (1, 2, 100):
        assert [x.tolist() for x in hamming_pairs(a, a, 4, block)] == [x.tolist() for x in hamming_pairs(a, a, 4)]


def test_cosine_threshold_is_inclusive_and_blocks_do_not_matter():
    x = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    y = np.array([[1, 0], [0, 1]], dtype=np.float32)
    threshold = float(np.float32(0.6))  # x[1] . y[0] is exactly this float32
    i, j, s = cosine_pairs(x, y, threshold)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 0), (1, 0), (1, 1), (2, 1)]
    assert s.tolist() == pytest.approx([1.0, 0.6, 0.8, 1.0])
    assert cosine_pairs(x, y, threshold + 1e-6)[0].tolist() == [0, 1, 2]  # just above: 0.6 falls out
    rng = np.random.default_rng(0)
    big = rng.standard_normal((50, 8)).astype(np.float32)
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    whole = cosine_pairs(big, big[:7], 0.3)
    for block in (1, 3, 64):
        assert [v.tolist() for v in cosine_pairs(big, big[:7], 0.3, block)] == [v.tolist() for v in whole]


def image_set(tmp_path, name, pictures, vectors, sets=None) -> ImageSet:
    paths = [save(p, tmp_path / f"{name}{k}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt) for k, (p, fmt) in
             enumerate(pictures)]  # fmt: skip
    return ImageSet.read([f"{name}:{k}" for k in range(len(paths))], paths, np.asarray(vectors, np.float32), sets)


def test_heldout_matches_name_both_paths_both_scores_and_every_level(tmp_path):
    e = np.eye(4, dtype=np.float32)
    sets = ["fashioniq_val;enhfashioniq", "fashioniq_val", "fashioniq_test"]
    heldout = image_set(tmp_path, "fiq", [(picture(k), "PNG") for k in (10, 11, 12)], [e[0], e[1], e[2]], sets)
    facap = image_set(
        tmp_path,
        "web",
        [(picture(10), "PNG"), (picture(11).resize((70, 70)), "JPEG"), (picture(20), "PNG"), (picture(21), "PNG")],
        # 0: the same file bytes; 1: a resized re-encode; 2: another picture, CLIP says "the same";
        # 3: nothing in common.
        [e[0], e[1], (e[2] + 0.1 * e[3]) / np.linalg.norm(e[2] + 0.1 * e[3]), e[3]],
    )
    m = heldout_matches(facap, heldout, Thresholds(hash_max_distance=4, cosine_min=0.99))
    by = {(r.image_a, r.image_b): r for r in m.itertuples()}
    assert set(by) == {("web:0", "fiq:0"), ("web:1", "fiq:1"), ("web:2", "fiq:2")}
    assert by["web:0", "fiq:0"].levels == "exact;near_duplicate;semantic" and by["web:0", "fiq:0"].exact
    assert "near_duplicate" in by["web:1", "fiq:1"].levels and not by["web:1", "fiq:1"].exact
    assert by["web:2", "fiq:2"].levels == "semantic" and by["web:2", "fiq:2"].hash_distance > 4
    assert by["web:0", "fiq:0"].heldout_sets == "fashioniq_val;enhfashioniq"
    assert by["web:2", "fiq:2"].cosine == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    assert by["web:1", "fiq:1"].path_a.endswith("web1.jpg") and by["web:1", "fiq:1"].path_b.endswith("fiq1.png")
    assert "semantic" in by["web:1", "fiq:1"].levels  # its vector is its original's
    assert level_counts(m) == {"exact": 1, "near_duplicate": 2, "semantic": 3}
    # Inclusive: at the resize's own distance it is a near-duplicate, one bit stricter it is not.
    d = int(by["web:1", "fiq:1"].hash_distance)
    at = heldout_matches(facap, heldout, Thresholds(hash_max_distance=d, cosine_min=2.0))
    below = heldout_matches(facap, heldout, Thresholds(hash_max_distance=d - 1, cosine_min=2.0))
    assert ("web:1", "fiq:1") in set(zip(at.image_a, at.image_b, strict=True))
    assert ("web:1", "fiq:1") not in set(zip(below.image_a, below.image_b, strict=True))


def test_reference_target_pairs_inside_facap_ignore_the_semantic_level(tmp_path):
    e = np.eye(3, dtype=np.float32)
    facap = image_set(tmp_path, "f", [(picture(30), "PNG"), (picture(30), "PNG"), (picture(31), "PNG"),
                                      (picture(32), "PNG")], [e[0], e[0], e[1], e[1]])  # fmt: skip
    m = reference_target_matches(facap, np.array([0, 2, 0]), np.array([1, 3, 2]), Thresholds(4, 0.5))
    assert m[["image_a", "image_b"]].values.tolist() == [["f:0", "f:1"]]  # 2-3 share a vector, not a picture
    assert m.iloc[0].levels == "exact;near_duplicate" and m.iloc[0].kind == "reference_target"


def test_a_drop_removes_the_triplets_that_touch_a_leaked_image_and_the_degenerate_ones():
    triplets = pd.DataFrame({"reference_id": ["a", "b", "c", "d", "e"], "target_id": ["x", "a", "y", "z", "e2"]})
    mask = triplets_touching(triplets, {"a", "z"}, {("e", "e2")})
    assert mask.tolist() == [True, True, False, True, True]
    assert not triplets_touching(triplets, set(), set()).any()


def test_the_data_card_line_states_the_claim_with_its_numbers():
    summary = {"facap_images": 10, "heldout_images": 5, "enhfashioniq_images": 3, "leaked_images": 2,
               "levels": {"exact": 0, "near_duplicate": 2, "semantic": 1},
               "thresholds": {"hash_max_distance": 3, "cosine_min": 0.95, "crop_fractions": [0.04]},
               "levels_checked": ["exact", "near_duplicate"]}  # fmt: skip
    line = claim_line(summary, "drop", removed=4, degenerate_removed=1)
    assert "distinct from those used in the downstream datasets" in line["paper"]
    assert not line["holds_for_candidates"] and line["holds_for_this_release"]
    assert "2 FACap images" in line["checked"] and "4 triplets touching them removed" in line["checked"]
    assert "dHash Hamming <= 3, crops 0.04) 2" in line["checked"] and "semantic not checked" in line["checked"]
    assert not claim_line(summary, "report", removed=4, degenerate_removed=0)["holds_for_this_release"]


def test_the_actions_report_keeps_drop_removes_fail_refuses():
    triplets = pd.DataFrame({"reference_id": ["a", "b", "c", "e"], "target_id": ["x", "a", "y", "e2"]})
    summary = {"facap_images": 6, "heldout_images": 3, "enhfashioniq_images": 2, "leaked_images": 1, "leaked": ["a"],
               "reference_target": [["e", "e2"]], "levels": {"exact": 1, "near_duplicate": 1, "semantic": 0},
               "levels_checked": ["exact", "near_duplicate"],
               "thresholds": {"hash_max_distance": 3, "cosine_min": 0.95, "crop_fractions": []}}  # fmt: skip
    kept, card = drop_leaked(triplets, summary, "drop")
    assert kept["reference_id"].tolist() == ["c"]
    assert (card["triplets_touching_leaked_images"], card["triplets_reference_is_target"]) == (2, 1)
    assert card["triplets_removed"] == 3 and card["claim"]["holds_for_this_release"]
    kept, card = drop_leaked(triplets, summary, "report")
    assert len(kept) == 4 and card["triplets_removed"] == 0 and not card["claim"]["holds_for_this_release"]
    with pytest.raises(ValueError, match="fail"):
        drop_leaked(triplets, summary, "fail")
    clean = {**summary, "leaked_images": 0, "leaked": [], "reference_target": []}
    assert len(drop_leaked(triplets, clean, "fail")[0]) == 4


def leakage_inputs(tmp_path) -> list[str]:
    """A manifest of two web images and two FashionIQ images (one of them a re-encoded copy of a web
    one), their pairs and embeddings: the check script's arguments."""
    paths = {
        "web:0": save(picture(40), tmp_path / "w0.png"),
        "web:1": save(picture(41), tmp_path / "w1.png"),
        "fashioniq:dress:A": save(picture(40), tmp_path / "a.jpg", "JPEG", quality=50),
        "fashioniq:dress:B": save(picture(42), tmp_path / "b.png"),
    }
    ids = list(paths)
    images = pd.DataFrame(
        {
            "image_id": ids,
            "path": list(paths.values()),
            "source": ["web", "web", "fashioniq", "fashioniq"],
            "split": ["train", "train", "val", "test"],
        }  # fmt: skip
    )
    images.to_parquet(tmp_path / "images.parquet")
    pd.DataFrame(
        {
            "reference_id": ["web:0", "web:1", "fashioniq:dress:A"],
            "target_id": ["web:1", "web:0", "fashioniq:dress:A"],
            "source": ["web", "web", "fashioniq"],
            "category": "dress",
        }  # fmt: skip
    ).to_parquet(tmp_path / "pairs.parquet")
    EmbeddingFile(np.array(ids), np.eye(4, dtype=np.float32), np.zeros(0, str), np.zeros(0, str)).save(
        tmp_path / "e.npz"
    )
    settings = {"levels": ["exact", "near_duplicate", "semantic"], "hash_max_distance": 3, "cosine_min": 0.95,
                "crop_fractions": [0.04]}  # fmt: skip
    return [
        sys.executable, str(REPO / "workflow_scripts/check_leakage.py"), "--manifest", str(tmp_path / "images.parquet"),
        "--pairs", str(tmp_path / "pairs.parquet"), "--embeddings", str(tmp_path / "e.npz"),
        "--facap-sources", '["web"]', "--settings", json.dumps(settings), "--data", "synthetic", "--run-name", "t",
        "--matches", str(tmp_path / "m.csv"), "--summary", str(tmp_path / "s.json"),
    ]  # fmt: skip


def test_the_check_script_finds_the_copy_and_fail_stops_naming_the_count(tmp_path):
    command = leakage_inputs(tmp_path)
    done = subprocess.run([*command, "--action", "drop"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["leaked"] == ["web:0"] and summary["heldout_by_split"] == {"val": 1, "test": 1}
    assert summary["enhfashioniq_images"] == 1 and summary["reference_target_pairs"] == 0
    matches = pd.read_csv(tmp_path / "m.csv")
    assert matches[["image_a", "image_b"]].values.tolist() == [["web:0", "fashioniq:dress:A"]]
    assert matches.iloc[0]["heldout_sets"] == "fashioniq_val;enhfashioniq"
    for out in ("s.json", "m.csv"):
        (tmp_path / out).unlink()
    failed = subprocess.run([*command, "--action", "fail"], capture_output=True, text=True)
    assert failed.returncode == 2 and "1 FACap images match a FashionIQ val/test image" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("max_distance", [0, 1, 3, 6, 7, 12])
def test_the_pigeonhole_hamming_search_finds_what_comparing_every_pair_finds(max_distance):
    from fashionblip2.datasets.leakage import _hamming_pairs_all

    rng = np.random.default_rng(max_distance)
    a = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64)
    b = rng.integers(0, 2**63, size=(80, 3), dtype=np.int64).astype(np.uint64)
    for k in range(60):  # near copies at every distance up to 14 bits, in any variant
        flips = rng.choice(64, size=k % 15, replace=False)
        b[k % 80, k % 3] = a[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    b[5] = a[7]  # several variants of one row matching one hash
    fast = hamming_pairs(a, b, max_distance)
    slow = _hamming_pairs_all(a, b, max_distance, block=64)
    assert [x.tolist() for x in fast] == [x.tolist() for x in slow]
    assert len(slow[0]) > 0


def test_the_report_counts_planted_copies_found_and_lists_false_positives(tmp_path):
    from fashionblip2.datasets.leakage_report import planted_recall

    world = tmp_path / "world"
    world.mkdir()
    save(picture(50), world / "orig1.png")
    save(picture(51), world / "orig2.png")
    save(picture(50).resize((70, 70)), world / "copy1.jpg", "JPEG")
    save(picture(60), world / "copy2.jpg", "JPEG")  # planted, but nothing like its original: missed
    save(picture(52), world / "other.png")
    garment = {c: "x" for c in ("garment", "colour", "colour2", "pattern", "sleeve", "length", "neckline", "fit",
                                 "fabric")}  # fmt: skip
    truth = pd.DataFrame(
        [
            {"path": "copy1.jpg", "planted_from": "orig1.png", "planted_transform": "resize", **garment},
            {"path": "copy2.jpg", "planted_from": "orig2.png", "planted_transform": "crop", **garment},
            *({"path": p, "planted_from": "", "planted_transform": "", **garment} for p in
              ("orig1.png", "orig2.png", "other.png")),
        ]
    )  # fmt: skip
    w = str(world)
    matches = pd.DataFrame(
        {
            "kind": ["heldout", "heldout", "reference_target"],
            "image_a": ["c1", "o", "c1"],
            "path_a": [f"{w}/copy1.jpg", f"{w}/other.png", f"{w}/copy1.jpg"],
            "image_b": ["o1", "o2", "o"],
            "path_b": [f"{w}/orig1.png", f"{w}/orig2.png", f"{w}/other.png"],
            "levels": "near_duplicate",
            "hash_distance": [1, 2, 0],
            "cosine": [0.9, 0.5, 0.1],
        }  # fmt: skip
    )
    planted, false = planted_recall(matches, truth, w, [0.04])
    assert planted["found"].tolist() == [True, False] and planted["hash_distance"].iloc[0] == 1
    assert planted["hash_distance"].iloc[1] > 3  # the missed copy's distance, measured from its files
    assert false[["image_a", "image_b"]].values.tolist() == [["o", "o2"]] and false["same_garment"].all()
