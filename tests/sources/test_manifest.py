import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fashionblip2.common.issues import BadInputError
from fashionblip2.config import resolved_sources
from fashionblip2.sources.manifest import build_manifest, manifest_summary
from fashionblip2.sources.records import MANIFEST_COLUMNS
from tests.conftest import source_settings


def sources_for(world: Path) -> dict:
    return resolved_sources(
        source_settings(fashion200k="synthetic", deepfashion_mm="synthetic", fashioniq="synthetic"), world
    )


def test_manifest_of_a_clean_world(tiny_world):
    world, truth_path = tiny_world
    result = build_manifest(sources_for(world), progress=False)
    truth = pd.read_parquet(truth_path)
    images = result.images
    assert list(images.columns) == MANIFEST_COLUMNS
    assert images.image_id.is_unique and images.image_id.is_monotonic_increasing
    assert images.groupby("source").size().to_dict() == truth.groupby("source").size().to_dict()
    assert set(images.path.map(lambda p: str(Path(p).relative_to(world)))) == set(truth.path)
    # Every rendered image has the world's size; planted leak copies are resized or cropped on purpose.
    planted = set(truth.loc[truth["planted_from"].fillna("") != "", "path"])
    relative = images.path.map(lambda p: str(Path(p).relative_to(world)))
    assert (images["mode"] == "RGB").all() and (images.loc[~relative.isin(planted), "width"] == 40).all()
    assert result.report.issues == []
    assert set(images[images.source == "fashioniq"].split) == {"train", "val", "test"}
    assert all(isinstance(json.loads(a), dict) for a in images.attributes)


def test_damaged_images_are_skipped_or_repaired_and_reported(tiny_world):
    world, _ = tiny_world
    clean = build_manifest(sources_for(world), progress=False).images
    by_source = {s: g.reset_index(drop=True) for s, g in clean.groupby("source")}
    missing = Path(by_source["fashion200k"].path[0])
    missing.unlink()
    empty = Path(by_source["deepfashion_mm"].path[0])
    empty.write_bytes(b"")
    gray = Path(by_source["fashion200k"].path[1])
    Image.open(gray).convert("L").save(gray, format="JPEG")
    fiq = by_source["fashioniq"]
    truncated = Path(fiq[fiq.split == "train"].path.iloc[0])
    Image.effect_noise((200, 200), 50).convert("RGB").save(truncated, format="PNG")
    truncated.write_bytes(truncated.read_bytes()[:-3000])

    result = build_manifest(sources_for(world), progress=False)
    issues = result.report.to_frame()
    by_reason = {r.split(":")[0]: row for r, row in zip(issues.reason, issues.itertuples(), strict=True)}
    assert by_reason["image missing"].file.startswith("labels/") and by_reason["image missing"].line >= 1
    assert by_reason["image is an empty file"].source == "deepfashion_mm"
    assert by_reason["image is truncated or corrupt"].source == "fashioniq"
    assert by_reason["non-RGB image (L)"].action == "repaired"
    assert len(result.images) == len(clean) - 3
    assert result.images.set_index("path").loc[str(gray), "mode"] == "L"  # kept; converted when loaded
    # Triplets that used the truncated image are gone and counted.
    asin = truncated.stem
    assert not ((result.triplets.candidate == asin) | (result.triplets.target == asin)).any()
    summary = manifest_summary(result)
    assert summary["skipped"] == result.report.count("skipped") >= 3 and summary["repaired"] == 1
    with pytest.raises(BadInputError, match="image missing"):
        build_manifest(sources_for(world), strict=True, progress=False)


def test_unknown_source_is_a_user_error(tiny_world):
    with pytest.raises(BadInputError, match="unknown source"):
        build_manifest({"fashion2000k": {"root": "x"}}, progress=False)
