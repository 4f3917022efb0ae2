"""The triplet scores: form problems, grounding against what is known, the model scores with a
model whose similarities are set by hand, and the assembled table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashionblip2.datasets.scores import SCORES, score_card
from fashionblip2.quality.triplet_scores import (
    FormSettings,
    ScoreSettings,
    caption_faithfulness,
    discriminative_ranks,
    discriminative_score,
    flagged,
    flagged_sample,
    form_issue,
    grounding_score,
    known_attributes,
    score_triplets,
)

FORM = FormSettings(min_words=3, max_words=20)
REF = "A red dress in a solid colour. It is mini."
TGT = "A blue dress with a floral pattern. It is maxi."


@pytest.mark.parametrize(
    ("text", "issue"),
    [
        ("The dress is blue and longer.", ""),
        ("", "empty"),
        ("Longer.", "too_short"),
        ("I'm sorry, I cannot compare these images.", "refusal"),
        (" ".join(["longer"] * 25), "too_long"),
        ("is blue is blue is blue is blue is blue is blue", "repeated"),
        (TGT, "copies_a_caption"),
        ("Das Kleid ist blau und länger", "not_english"),
    ],
)
def test_form_names_the_first_problem(text, issue):
    assert form_issue(text, REF, TGT, FORM) == issue


def test_identical_captions_are_a_form_problem():
    assert form_issue("The dress is blue.", TGT, TGT, FORM) == "identical_captions"


def test_grounding_rewards_differences_and_zeroes_contradictions():
    ref, tgt = known_attributes(REF, {}), known_attributes(TGT, {})
    assert grounding_score("The dress is blue and longer.", ref, tgt) == (1.0, "")
    # The wrong colour, and the wrong way.
    assert grounding_score("The dress is green.", ref, tgt) == (0.0, "contradicts_the_captions")
    assert grounding_score("The dress is shorter.", ref, tgt)[0] == 0.0
    # Only what the reference has too: a description, not a change.
    shared = known_attributes("A blue dress in a solid colour.", {})
    assert grounding_score("A blue dress.", shared, tgt) == (0.0, "describes_the_target")
    assert grounding_score("It looks nicer.", ref, tgt) == (0.0, "no_checkable_claim")


def test_the_catalogue_fills_in_what_the_caption_does_not_say():
    known = known_attributes("A blue dress.", {"product_text": "blue denim maxi dress"})
    assert known["fabric"] == "denim" and known["colour"] == "blue"
    # The caption speaks first.
    assert known_attributes("A red dress.", {"product_text": "blue dress"})["colour"] == "red"


def table_model(similarity: dict[tuple[str, str], float], images: dict[tuple[str, str], float] | None = None):
    """image_text and image_image from hand-set values (0 where not set)."""

    def image_text(ids, texts):
        return np.array([[similarity.get((i, t), 0.0) for t in texts] for i in ids])

    def image_image(a, b):
        return np.array([[(images or {}).get((i, j), 0.0) for j in b] for i in a])

    return image_text, image_image


def test_caption_faithfulness_is_the_worst_sentence_against_other_images():
    # Three images of a category; image a's second sentence matches image b better than a.
    sims = {("a", "A red dress."): 0.9, ("b", "A red dress."): 0.1, ("c", "A red dress."): 0.1,
            ("a", "It is mini."): 0.1, ("b", "It is mini."): 0.9, ("c", "It is mini."): 0.5,
            ("b", "A blue top."): 0.9, ("c", "A green top."): 0.9}  # fmt: skip
    image_text, _ = table_model(sims)
    scores = caption_faithfulness(
        ["a", "b", "c"], ["A red dress. It is mini.", "A blue top.", "A green top."], ["x"] * 3, image_text, 10, 0
    )
    assert scores[0] < 0 < scores[1] and scores[2] > 0


def test_discriminative_rank_of_the_target_in_the_shortlist():
    image_text, image_image = table_model({("t", "q"): 0.9, ("x", "q"): 0.5, ("y", "q"): 0.1})
    ranks, sizes = discriminative_ranks(["r"], ["t"], ["q"], {"r": ["x", "y", "t"]}, image_text, image_image)
    assert (ranks[0], sizes[0]) == (1, 3)
    ranks, sizes = discriminative_ranks(["r"], ["y"], ["q"], {"r": ["x", "y", "t"]}, image_text, image_image)
    assert ranks[0] == 3
    assert discriminative_score(np.array([1, 3, 1]), np.array([3, 3, 1])).tolist() == [1.0, 0.0, 1.0]


class FakeModel:
    def __init__(self):
        self.image_text, self.image_image = table_model({})


def test_score_triplets_scores_every_accepted_pair_of_both_datasets():
    refs, tgts = ["s:1", "fashioniq:dress:1", "s:3"], ["s:2", "fashioniq:dress:2", "s:4"]
    pairs = pd.DataFrame(
        {"reference_id": refs, "target_id": tgts, "source": ["fashion200k", "fashioniq", "fashion200k"],
         "category": ["dress"] * 3}
    )  # fmt: skip
    images = ["s:1", "s:2", "fashioniq:dress:1", "fashioniq:dress:2", "s:3", "s:4"]
    captions = pd.DataFrame({"image_id": images, "text": [REF, TGT] * 3, "status": "ok"})
    mods = pd.DataFrame(
        {"reference_id": refs, "target_id": tgts, "text": ["The dress is blue.", "The dress is green.", None],
         "status": ["ok", "ok", "failed"]}
    )  # fmt: skip
    manifest = pd.DataFrame({"image_id": images, "category": "dress", "attributes": "", "product_text": ""})
    settings = ScoreSettings(reference_images=8, seed=0, form=FORM, top_k=5, engine="blocked", block=64)
    out = score_triplets(pairs, captions, mods, manifest, {}, FakeModel(), settings)
    assert len(out) == 2 and set(out["dataset"]) == {"facap", "enhfashioniq"}
    assert set(SCORES) <= set(out.columns)
    by = out.set_index("dataset")
    assert by.loc["facap", "grounding"] == 1.0 and by.loc["enhfashioniq", "grounding"] == 0.0
    assert flagged(out, {"grounding": 0.5}).tolist() == (out["dataset"] == "enhfashioniq").tolist()
    card = score_card(out, list(SCORES))
    assert set(card) == set(SCORES) and "definition" in card["grounding"]
    sample = flagged_sample(out, {"grounding": 0.5, "form": 1.0}, 5, 0)
    assert sample["flagged_by"].tolist() == ["grounding"]
