"""FACap's filters: what each removes, the filtered release, and Table 1's rows for it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from fashionblip2.datasets.assembly import read_released, write_facap
from fashionblip2.datasets.filters import filter_counts, filter_facap
from fashionblip2.datasets.table1 import facap_rows

from ..conftest import REPO


def released(tmp_path):
    triplets = pd.DataFrame(
        {
            "reference_id": ["fashion200k:1_0", "fashion200k:2_0", "deepfashion_mm:a", "deepfashion_mm:b"],
            "target_id": ["fashion200k:3_0", "fashion200k:4_0", "deepfashion_mm:c", "deepfashion_mm:d"],
            "source": ["fashion200k", "fashion200k", "deepfashion_mm", "deepfashion_mm"],
            "category": ["dress", "dress", "dress", "top"],
            "text": ["The dress is blue.", "The dress is red.", "It is longer.", "A top."],
            "reference_caption": ["A red dress."] * 4,
            "target_caption": ["A blue dress.", "A red dress.", "A long dress.", "A top."],
            "grounding": [1.0, 0.0, 0.5, 0.0],
            "form": [1.0, 1.0, 1.0, 0.0],
        }
    )
    write_facap(triplets, ["grounding", "form"], {"dataset": "facap"}, tmp_path / "facap")
    return tmp_path / "facap"


def test_each_filter_is_counted_by_source_and_category(tmp_path):
    triplets, _ = read_released(released(tmp_path))
    counts = filter_counts(triplets, {"grounding": 0.5, "form": 1.0}).set_index(["source", "category"])
    assert counts.loc[("all", "all"), ["before", "fails grounding", "fails form", "removed", "after"]].tolist() == [
        4, 2, 1, 2, 2,
    ]  # fmt: skip
    assert counts.loc[("fashion200k", "dress"), "removed"] == 1
    assert counts.loc[("deepfashion_mm", "top"), "removed %"] == 100.0


def test_the_filtered_release_keeps_the_layout_and_says_what_it_removed(tmp_path):
    card, _ = filter_facap(released(tmp_path), {"grounding": 0.5}, tmp_path / "filtered")
    kept, written = read_released(tmp_path / "filtered")
    assert len(kept) == 2 and (kept["grounding"] >= 0.5).all()
    assert written["triplets_removed_by_filters"] == 2 and written["filters"] == {"grounding": {"keep_at_least": 0.5}}
    rows = json.loads((tmp_path / "filtered/cir_triplets/dress_train_triplets.json").read_text())
    assert [r["scores"]["grounding"] for r in rows] == [1.0, 0.5]
    assert not (tmp_path / "filtered/cir_triplets/top_train_triplets.json").exists()
    # Table 1 tells the two apart.
    names = [r["Dataset"] for r in facap_rows(tmp_path / "filtered", "this run", "filtered")]
    assert names == ["FACap (mod. texts, filtered)", "FACap (captions, filtered)"]
    assert facap_rows(tmp_path / "filtered", "this run", "filtered")[0]["#Pairs"] == 2


def test_a_filter_on_a_score_the_release_lacks_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="discriminative"):
        filter_facap(released(tmp_path), {"discriminative": 0.5}, tmp_path / "filtered")


def test_the_script_writes_the_release_and_the_report(tmp_path):
    facap = released(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "workflow_scripts/filter_facap.py"), "--facap", str(facap),
         "--filters", '{"grounding": 0.5, "form": 1.0}', "--data", "synthetic", "--run-name", "t",
         "--out", str(tmp_path / "out"), "--report", str(tmp_path / "filters.md")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "filters.md").read_text()
    assert "**2 of 4 triplets removed (50.0 %), 2 kept.**" in report and "| grounding | 0.5 |" in report
