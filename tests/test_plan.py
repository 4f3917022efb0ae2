"""`snakemake plan`: the bill before it comes, for the config as given, before anything has run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from fashionblip2.annotation.pricing import Prices, cost_usd, is_paid, price_factor
from fashionblip2.plan import Counts, rule_jobs, stated_counts
from tests.conftest import REPO, snakemake

TINY = ["--configfile", "config/presets/test.yaml"]


def stats(dry_run: subprocess.CompletedProcess) -> dict[str, int]:
    """The `Job stats` table of a dry run: jobs per rule."""
    table = (dry_run.stdout + dry_run.stderr).split("Job stats:", 1)[1].split("\n\n", 1)[0]
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    found.pop("total", None)
    return found


def plan_json(workdir: Path) -> dict:
    return json.loads((workdir / "results/plan.json").read_text())


def rows(plan: dict) -> dict[str, dict]:
    return {r["rule"]: r for r in plan["rules"]}


def test_one_predicate_and_one_price_rule():
    prices = Prices(input_per_million=0.15, output_per_million=0.60, image_tokens=85)
    assert [b for b in ("metadata", "rules", "transformers", "openai", "openai-batch") if is_paid(b)] == [
        "openai",
        "openai-batch",
    ]
    assert cost_usd(1e6, 1e6, prices, "openai") == pytest.approx(0.75)
    assert cost_usd(1e6, 1e6, prices, "openai-batch") == pytest.approx(0.375)  # the Batch API: half price
    assert cost_usd(1e6, 1e6, prices, "rules") == 0 and price_factor("transformers") == 0
    with pytest.raises(ValueError, match="annotation.prices lacks image_tokens"):
        Prices.from_config({"input_per_million": 1, "output_per_million": 1})


def test_counts_come_from_config_before_the_data_exist():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    counts = stated_counts(config)
    images = config["plan"]["images"]
    assert counts == Counts(
        sum(v["all"] for k, v in images.items() if k != "catalogue"),
        sum(v["paired"] for k, v in images.items() if k != "catalogue"),
        counts.pairs,
        counts.paired,
        # Each training validation encodes FashionIQ val's images and queries.
        config["plan"]["fashioniq_val"]["images"] + config["plan"]["fashioniq_val"]["queries"],
        counts.basis,
    )
    assert counts.basis["validation_items"] == "stated (plan.fashioniq_val)"
    assert counts.pairs == round(counts.paired * config["plan"]["pairs_per_image"])
    del config["plan"]["images"]["fashioniq"]
    with pytest.raises(ValueError, match="plan.images has no entry for the enabled source"):
        stated_counts(config)


@pytest.mark.e2e
def test_the_plan_runs_before_anything_and_counts_the_jobs_snakemake_runs(workflow_copy):
    """On a fresh copy: the tiny preset's jobs per rule are those of `snakemake -n all` and of
    `snakemake -n pilot`; the paper preset plans with none of its data/raw present."""
    snakemake(workflow_copy, "--cores", "1", "plan", *TINY)
    plan = rows(plan_json(workflow_copy))
    assert not (workflow_copy / "data").exists()  # the plan made nothing but itself
    everything = stats(snakemake(workflow_copy, "-n", "all", *TINY))
    assert {r: p["jobs"] for r, p in plan.items() if not r.startswith("pilot")} == everything
    pilot = stats(snakemake(workflow_copy, "-n", "pilot", *TINY))
    assert {r: p["jobs"] for r, p in plan.items() if r.startswith("pilot")} == {
        r: n for r, n in pilot.items() if r.startswith("pilot")
    }
    config = yaml.safe_load((workflow_copy / "config.yaml").read_text())
    # The same count from the library, for the default (Table 6 adds the unfiltered twin of cir_mh):
    # 14 models, each at both seeds; one seed fewer halves them.
    assert rule_jobs(config)["evaluate"] == 28
    assert rule_jobs({**config, "experiments": {**config["experiments"], "seeds": [0]}})["evaluate"] == 14

    paper = ["--configfile", "config/presets/paper.yaml"]
    assert not (workflow_copy / "data/raw").exists()
    snakemake(workflow_copy, "--cores", "1", "plan", *paper)
    plan = plan_json(workflow_copy)
    modification = rows(plan)["modification"]
    assert (
        modification["backend"] == "openai-batch"
        and modification["api_requests"] == 243_216
        and modification["usd"] > 0
    )
    assert rows(plan)["caption"]["gpu_hours"] > 40  # 243,216 images at the paper's 1.54 images/s
    # Any other target still checks the paths first.
    refused = snakemake(workflow_copy, "-n", "all", *paper, check=False)
    assert refused.returncode != 0 and "data/raw/fashion200k" in refused.stdout + refused.stderr


def bill(server, model: str, prices: dict) -> tuple[int, int, int, float]:
    """Requests, input tokens, output tokens (at most) and dollars the server was asked for by one
    model, at the configured prices: the batch requests at half the list price."""
    asked = [r for r in server.requests("bill") if r["model"] == model]
    usd = sum(
        (r["input_tokens"] * prices["input_per_million"] + r["max_tokens"] * prices["output_per_million"])
        / 1e6
        * (0.5 if r["via"] == "batch" else 1.0)
        for r in asked
    )
    return len(asked), sum(r["input_tokens"] for r in asked), sum(r["max_tokens"] for r in asked), usd


@pytest.mark.e2e
def test_the_plans_dollars_are_what_a_loopback_server_is_asked_for(workflow_copy, tmp_path, monkeypatch):
    """The tiny preset with captions through `openai` and modification texts through `openai-batch`,
    both at a loopback server that bills each request by its own count: the plan made before each
    stage is paid for names the requests and the dollars that stage then asks for."""
    from tests.support.billing_server import BillingServer

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    prices = config["annotation"]["prices"]
    server = BillingServer(tmp_path, prices["image_tokens"])
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-plan")
        api = {"base_url": server.base_url, "max_retries": 2, "timeout_s": 10, "concurrency": 4}
        overlay = {
            "annotation": {
                "caption": {"backend": "openai", "model": "test-vlm", **api},
                "modification": {"backend": "openai-batch", "model": "test-llm", "poll_s": 0.1, **api},
            }
        }
        (workflow_copy / "api.yaml").write_text(yaml.safe_dump(overlay))
        preset = [*TINY, "api.yaml"]

        # Nothing exists: every count is stated in config.
        snakemake(workflow_copy, "--cores", "1", "plan", *preset)
        before = rows(plan_json(workflow_copy))
        stated = yaml.safe_load((workflow_copy / "config/presets/test.yaml").read_text())["plan"]["images"]
        assert before["caption"]["api_requests"] == sum(v["paired"] for v in stated.values())

        # The pairs exist (offline): the plan builds the caption requests themselves.
        snakemake(workflow_copy, "--cores", "2", "data/pairs/pairs.parquet", *preset)
        snakemake(workflow_copy, "--cores", "1", "plan", *preset)
        planned = rows(plan_json(workflow_copy))
        assert server.requests("bill") == []  # planning asked nothing
        # One shard at a time: shards asking the same question in parallel would both be billed.
        snakemake(workflow_copy, "--cores", "1", "data/annotation/captions.parquet", *preset)
        requests, input_tokens, output_tokens, usd = bill(server, "test-vlm", prices)
        caption = planned["caption"]
        assert (caption["api_requests"], caption["input_tokens"], caption["output_tokens"]) == (
            requests,
            input_tokens,
            output_tokens,
        )
        assert caption["usd"] == pytest.approx(usd, abs=1e-4) and usd > 0

        # The captions exist: the modification requests themselves; the captions are paid for.
        snakemake(workflow_copy, "--cores", "1", "plan", *preset)
        planned = rows(plan_json(workflow_copy))
        assert planned["caption"]["usd_left"] == 0
        snakemake(workflow_copy, "--cores", "1", "data/annotation/modifications.parquet", *preset)
        requests, input_tokens, output_tokens, usd = bill(server, "test-llm", prices)
        modification = planned["modification"]
        assert modification["backend"] == "openai-batch" and requests > 0
        assert (modification["api_requests"], modification["input_tokens"], modification["output_tokens"]) == (
            requests,
            input_tokens,
            output_tokens,
        )
        assert modification["usd"] == pytest.approx(usd, abs=1e-4)
        # The estimate before the captions existed was an upper bound of what was asked.
        assert (
            before["modification"]["input_tokens"] >= input_tokens * before["modification"]["api_requests"] / requests
        )
        total = plan_json(workflow_copy)["totals"]["all"]
        assert total["usd"] == pytest.approx(caption["usd"] + modification["usd"], abs=1e-4)
    finally:
        server.stop()
