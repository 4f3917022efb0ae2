"""The paid-run pilot: its answers go into the full run's cache, so the full run pays only for the rest."""

import pandas as pd
import pytest
import yaml

from fashionblip2.annotation.cache import ResultCache
from fashionblip2.annotation.pilot import PASS, WARN, StageSummary, pilot_table, sample_pairs
from fashionblip2.annotation.pricing import Prices
from fashionblip2.annotation.prompts import PromptTemplate
from fashionblip2.annotation.stages import make_backend, plan_captions, plan_modifications, run_plan
from tests.annotation.test_annotation_api import api_stage, caption_inputs  # noqa: F401  (a fixture)
from tests.conftest import REPO

PRICES = Prices.from_config(yaml.safe_load((REPO / "config.yaml").read_text())["annotation"]["prices"])


def annotate_both(pairs, manifest, server, cache):
    """Caption the pairs' images, then write their modification texts, against the loopback server."""
    out = {}
    captions = None
    for stage, prompt in (("caption", "caption.yaml"), ("modification", "modification.yaml")):
        settings = {**api_stage(server), "model": f"test-{stage}", "max_words": 150}
        template = PromptTemplate.load(REPO / "prompts" / prompt)
        if stage == "caption":
            plan = plan_captions(pairs, manifest, template, settings)
        else:
            plan = plan_modifications(pairs, captions, template, settings)
        frame = run_plan(plan, settings, cache, make_backend(stage, settings), progress=False)
        captions = frame if stage == "caption" else captions
        out[stage] = (frame, plan, settings)
    return out


def test_after_the_pilot_the_full_run_asks_only_what_the_pilot_did_not(server_factory, caption_inputs, tmp_path):  # noqa: F811
    manifest_path, pairs_path, _ = caption_inputs
    manifest, pairs = pd.read_parquet(manifest_path), pd.read_parquet(pairs_path)
    pilot = sample_pairs(pairs, 6, seed=0)
    assert len(pilot) == 6 and pilot.equals(sample_pairs(pairs, 6, seed=0))  # seeded

    # What the full run asks on its own: its distinct questions.
    alone = server_factory()
    annotate_both(pairs, manifest, alone, ResultCache(tmp_path / "alone"))
    total = len(alone.requests())

    server = server_factory()
    cache = ResultCache(tmp_path / "cache")
    done = annotate_both(pilot, manifest, server, cache)
    asked_by_pilot = len(server.requests())
    assert 0 < asked_by_pilot < total
    annotate_both(pairs, manifest, server, cache)
    assert len(server.requests()) - asked_by_pilot == total - asked_by_pilot  # all - pilot, nothing twice
    asked = [r["item"] for r in server.requests()]
    assert len(asked) == len(set(asked)) == total

    # The pilot table: lengths and vocabularies against Table 1, failures, cost and the projection.
    summaries = {
        stage: StageSummary(stage, frame, plan.requests, full, "openai", 0.02)
        for (stage, (frame, plan, _)), full in zip(done.items(), (len(manifest), len(pairs)), strict=True)
    }
    table = pilot_table(summaries["caption"], summaries["modification"], PRICES, 0.3, budget_usd=1e-9)
    assert len(table) == 8 and set(table["Verdict"]) <= {PASS, WARN}
    spent, projected = table.iloc[-2]["Pilot"], table.iloc[-1]["Pilot"]
    assert spent > 0 and table.iloc[-1]["Verdict"] == WARN  # over a (tiny) budget
    rest = sum(s.full_items - len(s.frame) for s in summaries.values())
    per_request = spent / sum(len(s.requests) for s in summaries.values())
    assert projected == pytest.approx(per_request * rest, rel=0.5)


def test_the_pilot_table_warns_on_lengths_far_from_the_paper_and_on_failures():
    def summary(name, texts, statuses, limit=0.1):
        frame = pd.DataFrame(
            {"text": texts, "status": statuses, "reason": ["" if s == "ok" else "too long" for s in statuses]}
        )
        return StageSummary(name, frame, [], 100, "rules", limit)

    long_caption = " ".join(["word"] * 83)  # Table 1: captions average 82.90 words
    captions = summary("caption", [long_caption] * 10, ["ok"] * 10)
    short_texts = summary("modification", ["make it red"] * 8 + [None, None], ["ok"] * 8 + ["failed"] * 2)
    table = pilot_table(captions, short_texts, PRICES, 0.3, 0.0).set_index("Check")
    assert table.loc["average caption length (words)", "Verdict"] == PASS
    assert table.loc["average modification text length (words)", "Verdict"] == WARN  # 3 words vs 23.38
    failures = table.loc["modification failures (2 x too long)"]
    assert failures["Pilot"] == "2 of 10 (20.0%)" and failures["Verdict"] == WARN
    assert table.loc["cost of the pilot's answers (estimated, USD)", "Pilot"] == 0  # offline backends


def test_pairs_skipped_for_a_failed_caption_are_not_the_modification_stages_failures():
    from fashionblip2.annotation.runner import CAPTION_FAILED, check_failures

    statuses = ["ok"] * 95 + ["failed"] * 5
    reasons = [""] * 95 + [CAPTION_FAILED] * 5
    frame = pd.DataFrame({"text": ["make it red"] * 95 + [None] * 5, "status": statuses, "reason": reasons})
    mods = StageSummary("modification", frame, [], 100, "rules", 0.02)
    caps = StageSummary(
        "caption", pd.DataFrame({"text": ["a dress"], "status": ["ok"], "reason": [""]}), [], 1, "metadata", 0.02
    )
    line = pilot_table(caps, mods, PRICES, 0.3, 0.0).set_index("Check").loc["modification failures (none)"]
    assert line["Pilot"] == "0 of 95 (0.0%)" and line["Verdict"] == PASS
    assert check_failures(statuses, reasons, 0.02, stage="modification")["failed"] == 0  # the full run's count


def test_the_batch_api_pays_half_of_what_the_same_answers_cost_synchronously():
    frame = pd.DataFrame({"text": ["make it red"] * 4, "status": ["ok"] * 4, "reason": [""] * 4})
    from fashionblip2.annotation.backends import Request

    requests = [Request({"messages": [{"role": "user", "content": "Reference: a dress. " * 10}]}, {})] * 4
    synchronous = StageSummary("modification", frame, requests, 100, "openai", 0.02).cost(PRICES)
    batch = StageSummary("modification", frame, requests, 100, "openai-batch", 0.02).cost(PRICES)
    offline = StageSummary("modification", frame, requests, 100, "rules", 0.02).cost(PRICES)
    assert synchronous > 0 and batch == pytest.approx(synchronous / 2) and offline == 0


def test_failed_answers_read_back_from_parquet_count_no_output_tokens():
    """A failed answer is NaN once the shard has been through Parquet: it costs no output tokens."""
    from fashionblip2.annotation.backends import Request
    from fashionblip2.annotation.pilot import answer_tokens

    requests = [Request({"messages": [{"role": "user", "content": "x" * 40}]}) for _ in range(2)]
    assert answer_tokens(requests, ["a" * 40, float("nan")], Prices(1.0, 1.0, 0), with_image=False)[1] == 10
