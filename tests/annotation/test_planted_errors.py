"""The rules differ's planted errors: seeded, at their rates, of the kind recorded, and keyed apart."""

from __future__ import annotations

import pytest

from fashionblip2.annotation.backends import Request, RulesDiffer
from fashionblip2.annotation.lexicon import find_attributes
from fashionblip2.annotation.planted_errors import PlantedErrors, planted_kind

REFERENCE = "A red dress with a striped pattern in white. It has short sleeves and a V-neck. It is mini."
TARGET = "A blue dress in a solid colour. It has long sleeves and a V-neck. It is maxi."


def captions(n: int) -> list[tuple[str, str]]:
    colours = ["red", "blue", "green", "black", "white", "pink", "yellow", "purple"]
    lengths = ["mini", "knee-length", "midi", "maxi"]
    out = []
    for i in range(n):
        a, b = colours[i % 8], colours[(i // 8 + i + 1) % 8]
        out.append((f"A {a} dress in a solid colour. It is {lengths[i % 4]}. Item {i}.",
                    f"A {b} dress with a floral pattern. It is {lengths[(i + 1) % 4]}. Item {i}."))  # fmt: skip
    return out


def test_no_rate_writes_the_plain_difference_and_keeps_the_old_cache_key():
    differ = RulesDiffer(PlantedErrors(0, 0, 0, seed=3))
    assert differ.model == RulesDiffer().model == "lexicon-v3"
    text, reason, kind = differ.answer(REFERENCE, TARGET, "dress")
    assert kind == "" and reason == ""
    plain = "The dress is blue instead of red, has no pattern, is longer, maxi and has long sleeves instead of short"
    plain += " ones."
    assert text == plain


def test_rates_enter_the_model_name_so_cached_answers_never_mix():
    a, b = RulesDiffer(PlantedErrors(0.1, 0, 0, seed=0)), RulesDiffer(PlantedErrors(0.2, 0, 0, seed=0))
    assert len({a.model, b.model, RulesDiffer(PlantedErrors(0.1, 0, 0, seed=1)).model, RulesDiffer().model}) == 4


def test_kinds_come_at_their_rates_and_the_same_seed_gives_the_same_texts():
    planted = PlantedErrors(0.1, 0.1, 0.1, seed=0)
    pairs = captions(2000)
    kinds = [planted_kind(planted, r, t) for r, t in pairs]
    for kind in ("hallucination", "wrong_direction", "target_only"):
        assert 0.07 < kinds.count(kind) / len(pairs) < 0.13, kind
    again = [planted_kind(PlantedErrors(0.1, 0.1, 0.1, seed=0), r, t) for r, t in pairs]
    other_seed = [planted_kind(PlantedErrors(0.1, 0.1, 0.1, seed=1), r, t) for r, t in pairs]
    assert kinds == again and kinds != other_seed


def test_each_kind_is_wrong_in_its_own_way():
    seen = {}
    for seed in range(200):
        differ = RulesDiffer(PlantedErrors(1 / 3, 1 / 3, 1 / 3, seed=seed))
        text, _, kind = differ.answer(REFERENCE, TARGET, "dress")
        seen.setdefault(kind, text)
    target = find_attributes(TARGET)
    # A hallucinated colour is neither the target's nor the reference's.
    hallucinated = find_attributes(seen["hallucination"])
    assert hallucinated["colour"] not in ("blue", "red")
    # Backwards: the reference's values as the new ones, "shorter" for a longer target.
    assert "is red instead of blue" in seen["wrong_direction"] and "shorter" in seen["wrong_direction"]
    # The target alone: its caption's first sentence, nothing about what changes.
    assert seen["target_only"] == "A blue dress in a solid colour."
    assert find_attributes(seen["target_only"])["colour"] == target["colour"]


def test_generate_reports_through_the_callback_and_declines_identical_captions():
    differ = RulesDiffer(PlantedErrors(0.5, 0.2, 0.2, seed=0))
    got = []
    requests = [Request({}, {"reference_caption": REFERENCE, "target_caption": TARGET, "category": "dress"}),
                Request({}, {"reference_caption": TARGET, "target_caption": TARGET, "category": "dress"})]  # fmt: skip
    differ.generate(requests, lambda i, text, error: got.append((i, text, error)))
    assert got[0][1] and got[0][2] is None
    assert got[1] == (1, None, "no attribute difference between the two captions")


def test_rates_that_add_up_to_more_than_one_are_refused():
    with pytest.raises(ValueError, match="sum to at most 1"):
        PlantedErrors(0.5, 0.4, 0.2, seed=0)
