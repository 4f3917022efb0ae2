"""The triplet scores measured against the ground truth (issue 22): the labels from a hand-made world,
the planted errors re-derived from a real rules differ, the rank statistics and the script end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu, spearmanr

from fashionblip2.annotation.backends import RulesDiffer
from fashionblip2.annotation.planted_errors import PlantedErrors
from fashionblip2.quality.score_validity import (
    LABELS,
    ScoreValidityError,
    caption_contradictions,
    rating_correlations,
    roc_auc,
    to_markdown,
    truth_labels,
    validity_table,
)
from tests.conftest import REPO

# A hand-made world: image -> true attributes (a dress each, so every attribute applies).
WORLD = {
    "a": dict(colour="red", colour2="white", pattern="solid", sleeve="short", length="knee", neckline="round"),
    "b": dict(colour="blue", colour2="white", pattern="solid", sleeve="long", length="midi", neckline="v-neck"),
    "c": dict(
        colour="green", colour2="black", pattern="stripes", sleeve="sleeveless", length="mini", neckline="square"
    ),
}
COMMON = dict(garment="dress", fit="slim", fabric="cotton")
CAPTIONS = {
    "a": "A red dress in a solid colour. It has short sleeves and a round neckline. It is knee-length. It is fitted.",
    "b": "A blue dress in a solid colour. It has long sleeves and a V-neck. It is midi. It is made of cotton.",
    "c": "A green dress with a striped pattern in black. It is sleeveless with a square neckline. It is mini.",
}


def image_id(name: str) -> str:
    return f"fashion200k:{name}_0"


@pytest.fixture
def world() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(truth, manifest) of the hand-made world, in the synthetic world's columns."""
    truth = pd.DataFrame(
        [{"source": "fashion200k", "native_id": f"{name}_0", **COMMON, **attrs} for name, attrs in WORLD.items()]
    )
    manifest = pd.DataFrame({"image_id": [image_id(n) for n in WORLD], "source": "fashion200k"})
    return truth, manifest


def triplets(rows: list[tuple[str, str, str]], captions: dict[str, str] | None = None) -> pd.DataFrame:
    captions = {**CAPTIONS, **(captions or {})}
    return pd.DataFrame(
        [
            {
                "reference_id": image_id(ref),
                "target_id": image_id(tgt),
                "source": "fashion200k",
                "category": "dress",
                "dataset": "facap",
                "text": text,
                "reference_caption": captions[ref],
                "target_caption": captions[tgt],
            }
            for ref, tgt, text in rows
        ]
    )


# --- labels -----------------------------------------------------------------------------------------


def test_the_hand_made_captions_are_right():
    truth = {name: {**COMMON, **attrs} for name, attrs in WORLD.items()}
    assert all(caption_contradictions(CAPTIONS[n], truth[n]) == [] for n in WORLD)


def test_labels_from_the_ground_truth(world):
    truth, manifest = world
    given = triplets(
        [
            ("a", "b", "The dress is blue instead of red and has long sleeves."),  # a correct difference
            ("a", "b", "The dress is green instead of red."),  # a hallucinated colour
            ("a", "b", "The dress is white and made of cotton."),  # true of the target, but shared
            ("a", "b", "The dress looks nicer."),  # claims nothing: names no change
        ]
    )
    labels = truth_labels(given, truth, manifest, None, "rules")
    assert labels["wrong_modification"].tolist() == [False, True, True, True]
    assert labels["false_claims"].tolist() == ["", "colour green", "", ""]
    assert labels["true_differences"].tolist() == [2, 0, 0, 0]
    assert not labels["wrong_caption"].any()
    assert labels["wrong"].tolist() == labels["wrong_modification"].tolist()
    assert labels["dataset"].tolist() == ["facap"] * 4
    assert (labels["planted_error"] == "").all()


def test_a_caption_naming_a_wrong_pattern_is_a_wrong_caption(world):
    truth, manifest = world
    wrong = {"a": CAPTIONS["a"].replace("in a solid colour", "with a floral pattern")}
    given = triplets([("a", "b", "The dress is blue instead of red.")], wrong)
    labels = truth_labels(given, truth, manifest, None, "rules")
    assert labels[["reference_caption_wrong", "target_caption_wrong", "wrong_caption", "wrong"]].iloc[0].tolist() == [
        True,
        False,
        True,
        True,
    ]
    assert not labels["wrong_modification"].iloc[0]
    assert labels["caption_errors"].iloc[0] == "reference pattern: caption floral, truth solid"


def test_caption_colour_may_be_the_second_colour_and_absent_attributes_are_not_checked():
    image = {**COMMON, **WORLD["a"], "sleeve": None}
    assert caption_contradictions("A white dress with long sleeves.", image) == []
    assert caption_contradictions("A white skirt.", image) == []  # the garment is ignored
    assert caption_contradictions("A black dress.", image) == ["colour: caption black, truth red"]


@pytest.mark.parametrize("kind", ["hallucination", "wrong_direction", "target_only"])
def test_planted_errors_are_found_from_a_real_rules_differ(world, kind):
    truth, manifest = world
    rates = {"hallucination": 0.0, "wrong_direction": 0.0, "target_only": 0.0, kind: 1.0}
    planted = PlantedErrors(**rates, seed=7)
    pairs = [("a", "b"), ("b", "c"), ("c", "a")]
    texts = [RulesDiffer(planted).answer(CAPTIONS[r], CAPTIONS[t], "dress") for r, t in pairs]
    assert [applied for _, _, applied in texts] == [kind] * 3
    rows = [(r, t, text) for (r, t), (text, _, _) in zip(pairs, texts, strict=True)]
    # The same pair with the honest text (as another backend or an edit would leave it) is no plant.
    honest, _, _ = RulesDiffer().answer(CAPTIONS["a"], CAPTIONS["b"], "dress")
    given = triplets([*rows, ("a", "b", honest)])
    labels = truth_labels(given, truth, manifest, planted, "rules")
    assert labels["planted_error"].tolist() == [kind, kind, kind, ""]
    assert labels["wrong_modification"].tolist() == [True, True, True, False]
    # Another backend's texts were not written by the rules differ: nothing is counted as planted.
    other = truth_labels(given, truth, manifest, planted, "openai")
    assert (other["planted_error"] == "").all()


def test_an_image_without_ground_truth_is_named(world):
    truth, manifest = world
    given = triplets([("a", "b", "The dress is blue.")])
    given.loc[0, "target_id"] = "fashion200k:zz_9"
    with pytest.raises(ScoreValidityError, match="fashion200k:zz_9"):
        truth_labels(given, truth, manifest, None, "rules")
    manifest = pd.concat([manifest, pd.DataFrame({"image_id": ["fashion200k:zz_9"], "source": ["fashion200k"]})])
    with pytest.raises(ScoreValidityError, match="fashion200k:zz_9.*no ground-truth row"):
        truth_labels(given, truth, manifest, None, "rules")


# --- the validity table -----------------------------------------------------------------------------


def scored(score: list[float], wrong: list[bool]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, labels) of len(score) made-up triplets, every label equal to ``wrong``."""
    keys = {"reference_id": [f"r{i}" for i in range(len(score))], "target_id": [f"t{i}" for i in range(len(score))]}
    scores = pd.DataFrame({**keys, "s": score})
    labels = pd.DataFrame({**keys, **{label: wrong for label in LABELS}})
    return scores, labels


def auc_of(score: list[float], wrong: list[bool], samples: int = 200) -> pd.Series:
    scores, labels = scored(score, wrong)
    table = validity_table(scores, labels, ["s"], {"s": 0.5}, samples, 0)
    return table.set_index("label").loc["wrong"]


def test_auc_of_a_perfect_a_reversed_and_a_constant_score():
    wrong = [True, True, False, False, False]
    assert auc_of([0.1, 0.2, 0.7, 0.8, 0.9], wrong)["auc"] == 1.0
    assert auc_of([0.9, 0.8, 0.1, 0.2, 0.3], wrong)["auc"] == 0.0
    assert auc_of([0.5] * 5, wrong)["auc"] == 0.5
    # Ties between a wrong and a right triplet count one half.
    assert auc_of([0.1, 0.5, 0.5, 0.8, 0.9], wrong)["auc"] == pytest.approx(5.5 / 6)


def test_auc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(3)
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    wrong = rng.random(60) < 0.4
    u = mannwhitneyu(-score[wrong], -score[~wrong]).statistic
    assert roc_auc(-score, wrong) == pytest.approx(u / (wrong.sum() * (~wrong).sum()))


def test_a_label_without_positives_or_negatives_has_no_auc():
    row = auc_of([0.1, 0.2, 0.3], [False, False, False])
    assert np.isnan(row["auc"]) and np.isnan(row["auc_low"]) and np.isnan(row["auc_high"])
    assert np.isnan(row["recall"]) and row["precision"] == 0.0
    assert np.isnan(auc_of([0.1, 0.2, 0.3], [True, True, True])["auc"])


def test_the_interval_holds_the_estimate_and_narrows_with_more_triplets():
    rng = np.random.default_rng(0)

    def interval(n: int) -> pd.Series:
        wrong = rng.random(n) < 0.3
        score = rng.normal(size=n) - wrong  # wrong triplets score lower, with overlap
        return auc_of(score.tolist(), wrong.tolist(), samples=400)

    small, large = interval(60), interval(600)
    for row in (small, large):
        assert row["auc_low"] <= row["auc"] <= row["auc_high"]
        assert 0.5 < row["auc"] < 1
    assert large["auc_high"] - large["auc_low"] < (small["auc_high"] - small["auc_low"]) / 2


def test_the_bootstrap_is_seeded():
    rng = np.random.default_rng(1)
    score, wrong = rng.normal(size=80), rng.random(80) < 0.5
    scores, labels = scored(score.tolist(), wrong.tolist())
    first = validity_table(scores, labels, ["s"], {"s": 0.0}, 100, 5)
    assert first.equals(validity_table(scores, labels, ["s"], {"s": 0.0}, 100, 5))
    assert not first.equals(validity_table(scores, labels, ["s"], {"s": 0.0}, 100, 6))


def test_precision_and_recall_of_the_flagged_triplets():
    scores, labels = scored([0.1, 0.3, 0.6, 0.9, 0.2, 0.5], [True, False, True, False, True, False])
    labels["wrong_caption"] = [False] * 6
    table = validity_table(scores, labels, ["s"], {"s": 0.5}, 50, 0).set_index("label")
    # flagged (< 0.5): 0.1, 0.3, 0.2 (0.5 itself is not below); wrong among them: 0.1, 0.2; wrong in all: 3
    assert table.loc["wrong", ["n", "positives", "flagged", "threshold"]].tolist() == [6, 3, 3, 0.5]
    assert table.loc["wrong", "precision"] == pytest.approx(2 / 3)
    assert table.loc["wrong", "recall"] == pytest.approx(2 / 3)
    assert table.loc["wrong_caption", "precision"] == 0.0 and np.isnan(table.loc["wrong_caption", "recall"])


def test_every_score_column_given_is_measured_and_a_missing_score_is_left_out():
    scores, labels = scored([0.1, 0.9, 0.2, 0.8], [True, False, True, False])
    scores["other"] = [np.nan, 0.1, 0.5, 0.6]
    table = validity_table(scores, labels, ["s", "other"], {"s": 0.5, "other": 0.3}, 50, 0)
    assert table[["score", "label"]].value_counts().size == 2 * len(LABELS)
    assert table.set_index(["score", "label"]).loc[("other", "wrong"), "n"] == 3
    with pytest.raises(ScoreValidityError, match="no threshold for score column"):
        validity_table(scores, labels, ["s", "other"], {"s": 0.5}, 50, 0)
    with pytest.raises(ScoreValidityError, match="missing column"):
        validity_table(scores, labels, ["s", "absent"], {"s": 0.5, "absent": 1}, 50, 0)


# --- the ratings ------------------------------------------------------------------------------------


def test_correlation_with_the_ratings_averaged_over_annotators():
    items = pd.DataFrame(
        {
            "item_id": [f"q{i}" for i in range(7)],
            "dataset": ["facap"] * 6 + ["fashioniq"],
            "category": "dress",
            "reference_id": [f"r{i}" for i in range(7)],
            "target_id": [f"t{i}" for i in range(7)],
            "text": "x",
        }
    )
    # Averaged, faithfulness rises with the score; one annotator alone would not say so.
    first = [1, 2, 2, 5, 4, 5, 3]
    second = [1, 1, 3, 2, 5, 5, 3]
    ratings = pd.concat(
        [
            pd.DataFrame({"item_id": items["item_id"], "faithfulness": f, "details": 3, "saliency": s, "annotator": a})
            for f, s, a in [(first, [5, 4, 3, 2, 1, 1, 1], "x"), (second, [5, 4, 3, 2, 1, 1, 2], "y")]
        ]
    )
    scores = pd.DataFrame(
        {
            "reference_id": [f"r{i}" for i in range(7)],
            "target_id": [f"t{i}" for i in range(7)],
            "dataset": ["facap"] * 6 + ["enhfashioniq"],  # the FashionIQ item's pair, another dataset's text
            "s": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        }
    )
    table = rating_correlations(scores, items, ratings, ["s"], 200, 0).set_index("criterion")
    assert table.loc["faithfulness", "spearman"] == pytest.approx(1.0)
    expected = spearmanr(scores["s"][:6], [5, 4, 3, 2, 1, 1]).statistic
    assert table.loc["saliency", "spearman"] == pytest.approx(expected)
    assert np.isnan(table.loc["details", "spearman"])  # every item rated the same
    assert (table["n"] == 6).all() and (table["items_without_score"] == 1).all()
    low, high = table.loc["saliency", ["spearman_low", "spearman_high"]]
    assert low <= table.loc["saliency", "spearman"] <= high


# --- the report and the script ----------------------------------------------------------------------


def test_the_report_counts_planted_errors_and_wrong_captions(world):
    truth, manifest = world
    labels = truth_labels(triplets([("a", "b", "The dress is blue.")]), truth, manifest, None, "rules")
    labels.loc[0, "planted_error"] = "target_only"
    scores = triplets([("a", "b", "The dress is blue.")]).assign(s=1.0)
    md = to_markdown(validity_table(scores, labels, ["s"], {"s": 0.5}, 10, 0), labels, "Provenance: here.", 10, 0)
    assert "Provenance: here." in md
    assert "| planted error: target_only | 1 |" in md and "| planted error: hallucination | 0 |" in md
    assert "| wrong caption (either) | 0 |" in md
    assert "Scores against Table 2" not in md


def test_the_script_end_to_end(tmp_path, world):
    truth, manifest = world
    truth.to_parquet(tmp_path / "truth.parquet")
    manifest.to_parquet(tmp_path / "manifest.parquet")
    given = triplets(
        [
            ("a", "b", "The dress is blue instead of red."),
            ("b", "a", "The dress is green instead of blue."),
            ("b", "c", "The dress is green and has stripes."),
            ("c", "a", "The dress has stripes."),
        ]
    )
    given = given.assign(grounding=[0.9, 0.1, 0.8, 0.2], form=[1.0, 1.0, 0.0, 1.0])
    given.to_parquet(tmp_path / "scores.parquet")
    items = given[["reference_id", "target_id", "dataset", "category", "text"]].assign(
        item_id=[f"q{i}" for i in range(4)]
    )
    items.to_csv(tmp_path / "items.csv", index=False)
    for name, shift in [("auto-1", 0), ("auto-2", 1)]:
        pd.DataFrame(
            {"item_id": items["item_id"], "faithfulness": [5, 1, 4, 2], "details": 2, "saliency": 3 + shift}
        ).assign(annotator=name).to_csv(tmp_path / f"{name}.csv", index=False)
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(REPO / "workflow_scripts/score_validity.py"),
        "--scores", str(tmp_path / "scores.parquet"),
        "--manifest", str(tmp_path / "manifest.parquet"),
        "--ground-truth", str(tmp_path / "truth.parquet"),
        "--planted-errors", '{"hallucination": 0.0, "wrong_direction": 0.0, "target_only": 0.0, "seed": 0}',
        "--modification-backend", "rules",
        "--score-columns", '["grounding", "form"]',
        "--thresholds", '{"grounding": 0.5, "form": 0.5}',
        "--items", str(tmp_path / "items.csv"),
        "--ratings", str(tmp_path / "auto-1.csv"), str(tmp_path / "auto-2.csv"),
        "--samples", "50", "--seed", "0", "--data", "synthetic", "--run-name", "test",
        "--out-md", str(out / "validity.md"),
        "--out-csv", str(out / "validity.csv"),
        "--out-labels", str(out / "labels.parquet"),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "validity.csv")
    assert len(table) == 2 * len(LABELS) and set(table["score"]) == {"grounding", "form"}
    grounding = table.set_index(["score", "label"]).loc[("grounding", "wrong_modification")]
    assert grounding["auc"] == 1.0 and grounding["positives"] == 2
    labels = pd.read_parquet(out / "labels.parquet")
    assert labels["wrong_modification"].tolist() == [False, True, False, True]
    md = (out / "validity.md").read_text()
    assert "run test" in md and "Scores against Table 2" in md and "| grounding | faithfulness | 4 |" in md

    # A triplet whose image has no ground truth stops the script with the id and writes nothing.
    given.loc[0, "reference_id"] = "fashion200k:gone_0"
    given.to_parquet(tmp_path / "scores.parquet")
    for path in out.iterdir():
        path.unlink()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "fashion200k:gone_0" in proc.stderr
    assert list(out.iterdir()) == []


def test_on_real_data_the_script_compares_the_scores_with_the_ratings_only(tmp_path, world):
    """No ground truth (real data): the people's ratings of Table 2's sample are all there is."""
    _, manifest = world
    manifest.to_parquet(tmp_path / "manifest.parquet")
    given = triplets([("a", "b", "The dress is blue."), ("b", "a", "It is red."), ("b", "c", "It has stripes.")])
    given.assign(grounding=[0.9, 0.1, 0.5]).to_parquet(tmp_path / "scores.parquet")
    items = given[["reference_id", "target_id", "dataset", "category", "text"]].assign(item_id=["q0", "q1", "q2"])
    items.to_csv(tmp_path / "items.csv", index=False)
    pd.DataFrame({"item_id": ["q0", "q1", "q2"], "faithfulness": [5, 1, 3], "details": 2, "saliency": 3}).assign(
        annotator="person-1"
    ).to_csv(tmp_path / "person-1.csv", index=False)
    out = tmp_path / "out"
    base = [
        sys.executable, str(REPO / "workflow_scripts/score_validity.py"),
        "--scores", str(tmp_path / "scores.parquet"), "--manifest", str(tmp_path / "manifest.parquet"),
        "--planted-errors", "", "--modification-backend", "openai-batch",
        "--score-columns", '["grounding"]', "--thresholds", '{"grounding": 0.5}',
        "--samples", "50", "--seed", "0", "--data", "real", "--run-name", "paper",
        "--out-md", str(out / "validity.md"), "--out-csv", str(out / "validity.csv"),
        "--out-labels", str(out / "labels.parquet"),
    ]  # fmt: skip
    nothing = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert nothing.returncode != 0 and "nothing to measure against" in nothing.stderr
    ratings = ["--items", str(tmp_path / "items.csv"), "--ratings", str(tmp_path / "person-1.csv")]
    proc = subprocess.run(base + ratings, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (out / "validity.md").read_text()
    assert "against people's ratings" in md and "| grounding | faithfulness | 3 | 1.00" in md
    assert pd.read_csv(out / "validity.csv").empty and pd.read_parquet(out / "labels.parquet").empty
