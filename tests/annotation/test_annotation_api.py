"""The OpenAI-compatible backends against a real HTTP server on loopback, with faults."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fashionblip2.annotation.backends import APISettings, BatchPending, OpenAIBatch, OpenAIChat, Request
from fashionblip2.annotation.cache import CacheWriteError, ResultCache
from fashionblip2.annotation.runner import annotate
from fashionblip2.annotation.validation import check_caption, check_modification
from fashionblip2.config import resolved_sources
from fashionblip2.sources.manifest import build_manifest
from tests.conftest import REPO, snakemake
from tests.support.fake_openai_server import FakeServer


def modification_requests(n: int) -> list[Request]:
    return [
        Request(
            {
                "messages": [{"role": "user", "content": f"Reference: item {i}. Target: item {i + 1}."}],
                "max_new_tokens": 64,
            },
            {},
        )
        for i in range(n)
    ]


def settings(server: FakeServer, **kw) -> APISettings:
    return APISettings(base_url=server.base_url, model="test-model", **{"timeout_s": 1.0, "max_retries": 6, **kw})


def test_every_item_completes_through_transient_faults_and_a_rerun_calls_nothing(server_factory, tmp_path):
    server = server_factory("--fail-rate", "0.3", "--hang", "3")
    backend = OpenAIChat(settings(server, concurrency=8), with_image=False)
    cache = ResultCache(tmp_path / "cache")
    requests = modification_requests(60)
    outcomes = annotate(requests, backend, cache, lambda t: check_modification(t, 60), progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 60, [o.reason for o in outcomes if o.status != "ok"]
    seen = server.requests()
    faults = {r["fault"] for r in seen if r["fault"]}
    assert faults == {"429", "500", "timeout", "drop", "malformed", "empty"}
    assert 60 < len(seen) < 120 and len({r["item"] for r in seen}) == 60

    again = annotate(requests, backend, cache, lambda t: check_modification(t, 60), progress=False)
    assert all(o.cached and o.status == "ok" for o in again)
    assert len(server.requests()) == len(seen)  # the server saw no request for a cached item


def test_identical_questions_in_one_run_are_asked_once(server_factory, tmp_path):
    server = server_factory()
    backend = OpenAIChat(settings(server, concurrency=4), with_image=False)
    requests = modification_requests(10)
    requests += [requests[2], requests[7], requests[2]]  # two pairs can ask the very same question
    outcomes = annotate(requests, backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 13
    assert outcomes[10].text == outcomes[12].text == outcomes[2].text and outcomes[11].text == outcomes[7].text
    assert len(server.requests()) == 10 and len({r["item"] for r in server.requests()}) == 10


def test_a_cache_that_fails_mid_run_stops_it_and_no_question_is_asked_twice(server_factory, tmp_path):
    """The answers' folders cannot be made (each is taken by a file), though the cache folder itself is
    writable: the first answer's write fails, and the run stops instead of failing the item and asking again."""
    server = server_factory()
    root = tmp_path / "cache"
    root.mkdir()
    for prefix in range(256):
        (root / f"{prefix:02x}").write_text("")
    backend = OpenAIChat(settings(server, concurrency=4), with_image=False)
    with pytest.raises(CacheWriteError, match=f"result cache {root} "):
        annotate(modification_requests(64), backend, ResultCache(root), lambda t: None, progress=False)
    seen = server.requests()
    assert 1 <= len(seen) <= 64 and len({r["item"] for r in seen}) == len(seen)


def test_retry_after_is_honoured(server_factory, tmp_path):
    server = server_factory("--fail-rate", "1.0", "--faults", "429", "--retry-after", "1")
    backend = OpenAIChat(settings(server, concurrency=2), with_image=False)
    outcomes = annotate(
        modification_requests(2),
        backend,
        ResultCache(tmp_path / "c"),
        lambda t: check_modification(t, 60),
        progress=False,
    )
    assert all(o.status == "ok" for o in outcomes)
    times: dict[str, list[float]] = {}
    for r in server.requests():
        times.setdefault(r["item"], []).append(r["t"])
    for first, second in (sorted(t) for t in times.values()):
        assert second - first >= 0.9  # the client waited as the 429 asked


def test_captions_send_the_image_and_rejected_answers_are_reported(server_factory, tmp_path, tiny_world):
    world, _ = tiny_world
    image = next((world / "fashioniq/images").glob("*.png"))
    server = server_factory()
    backend = OpenAIChat(settings(server), with_image=True)
    request = Request(
        {"messages": [{"role": "user", "content": "Describe the dress."}], "image_sha256": "x"}, {"path": str(image)}
    )
    (outcome,) = annotate(
        [request], backend, ResultCache(tmp_path / "c"), lambda t: check_caption(t, 5), progress=False
    )
    # The fake answer is longer than 5 words: rejected, asked once more, then reported as failed.
    assert outcome.status == "failed" and outcome.reason.startswith("too long")
    seen = server.requests()
    assert len(seen) == 2 and all(r["with_image"] for r in seen)
    assert not list((tmp_path / "c").rglob("*.json"))  # nothing rejected is cached


def test_batch_api_round_trip(server_factory, tmp_path):
    server = server_factory()
    backend = OpenAIBatch(settings(server), with_image=False, poll_s=0.05)
    cache = ResultCache(tmp_path / "c")
    outcomes = annotate(modification_requests(5), backend, cache, lambda t: check_modification(t, 60), progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 5
    assert [o.text.rsplit(" ", 1)[1] for o in outcomes] == [r["item"] + "." for r in server.requests("batch-item")]
    assert len(server.requests("files")) == 1 and len(server.requests("batches")) == 1
    assert annotate(modification_requests(5), backend, cache, lambda t: None, progress=False)[0].cached


def test_a_batch_over_the_limits_is_split_and_each_part_tracked(server_factory, tmp_path):
    server = server_factory()
    state = tmp_path / "shard.batches.json"
    backend = OpenAIBatch(settings(server), with_image=False, poll_s=0.05, state_path=state, max_requests=2)
    outcomes = annotate(modification_requests(5), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 5
    assert [r["requests"] for r in server.requests("batches")] == [2, 2, 1]
    recorded = json.loads(state.read_text())["batches"]
    assert [len(b["custom_ids"]) for b in recorded] == [2, 2, 1] and all(b["read"] for b in recorded)
    assert all(b["input_file_id"].startswith("file-") for b in recorded)


def test_a_question_asked_twice_goes_into_a_batch_once(server_factory, tmp_path):
    server = server_factory()
    backend = OpenAIBatch(settings(server), with_image=False, poll_s=0.05)
    requests = modification_requests(3)
    answers: dict[int, str | None] = {}
    backend.generate([*requests, requests[1]], lambda i, text, error: answers.setdefault(i, text))
    assert [r["requests"] for r in server.requests("batches")] == [3]  # custom ids are unique in a file
    assert sorted(answers) == [0, 1, 2, 3] and answers[3] == answers[1] is not None


def test_an_expired_batch_is_resubmitted_only_for_what_has_no_answer(server_factory, tmp_path):
    server = server_factory("--expire-first-batch")
    backend = OpenAIBatch(settings(server), with_image=False, poll_s=0.05, state_path=tmp_path / "s.json")
    outcomes = annotate(modification_requests(6), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 6
    assert [r["requests"] for r in server.requests("batches")] == [6, 3]
    assert len(server.requests("batch-item")) == 6  # every question answered once


def test_a_batch_that_outlives_the_job_is_left_for_the_next_run(server_factory, tmp_path):
    server = server_factory("--batch-seconds", "30")
    backend = OpenAIBatch(settings(server), with_image=False, poll_s=0.05, max_wait_s=0.5, state_path=tmp_path / "s")
    with pytest.raises(BatchPending, match="rerun to resume them"):
        annotate(modification_requests(3), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert len(server.requests("batches")) == 1


@pytest.fixture
def caption_inputs(tiny_world, tmp_path):
    """A manifest and pairs of the tiny world, as the caption rule reads them."""
    world, _ = tiny_world
    sources = resolved_sources({"fashion200k": {"root": "synthetic"}}, world)
    images = build_manifest(sources, progress=False).images
    images.to_parquet(tmp_path / "manifest.parquet")
    ids = images["image_id"].tolist()
    pairs = pd.DataFrame(
        {
            "reference_id": ids,
            "target_id": ids[1:] + ids[:1],
            "source": "fashion200k",
            "category": images["category"].tolist(),
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    return tmp_path / "manifest.parquet", tmp_path / "pairs.parquet", len(ids)


def caption_command(stage: dict, manifest: Path, pairs: Path, cache: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "workflow_scripts/annotate.py"),
        "--stage",
        "caption",
        "--shard",
        "0",
        "--shards",
        "1",
        "--settings",
        json.dumps(stage),
        "--run-settings",
        "{}",
        "--prices",
        "{}",
        "--prompt",
        str(REPO / "prompts/caption.yaml"),
        "--manifest",
        str(manifest),
        "--pairs",
        str(pairs),
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--no-progress",
    ]


def api_stage(server: FakeServer, concurrency: int = 4) -> dict:
    return {
        "backend": "openai",
        "model": "test-vlm",
        "base_url": server.base_url,
        "api_key_env": "FACAP_TEST_KEY",
        "concurrency": concurrency,
        "max_retries": 2,
        "timeout_s": 5,
        "max_words": 150,
    }


def test_a_killed_shard_resumes_and_pays_only_for_what_was_not_cached(server_factory, caption_inputs, tmp_path):
    manifest, pairs, n = caption_inputs
    key = "sk-test-" + secrets.token_hex(16)
    server = server_factory("--latency", "0.15", "--expect-key-env", "FACAP_TEST_KEY", env={"FACAP_TEST_KEY": key})
    cache, out, log = tmp_path / "cache", tmp_path / "captions.parquet", tmp_path / "caption.log"
    env = {**os.environ, "FACAP_TEST_KEY": key}
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            caption_command(api_stage(server, 2), manifest, pairs, cache, out), env=env, stderr=stderr
        )
        deadline = time.monotonic() + 60
        while len(list(cache.rglob("*.json"))) < 4:
            assert time.monotonic() < deadline and proc.poll() is None, "the shard ended before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # a killed shard leaves no output that looks complete
    first = server.requests()
    answered_first = {r["item"] for r in first}
    cached_first = len(list(cache.rglob("*.json")))
    assert 4 <= cached_first < n

    with open(log, "a") as stderr:
        subprocess.run(
            caption_command(api_stage(server), manifest, pairs, cache, out), env=env, stderr=stderr, check=True
        )
    result = pd.read_parquet(out)
    assert (result["status"] == "ok").all() and len(result) == n
    assert result["cached"].sum() == cached_first
    second = server.requests()[len(first) :]
    # The second run asked only for items without a cached answer (at most the ones in flight at the kill).
    assert len(second) == n - cached_first
    assert len(answered_first & {r["item"] for r in second}) <= len(answered_first) - cached_first
    assert all(r["auth_ok"] for r in server.requests())  # the key was sent...
    # ...and is written nowhere: not in logs, outputs, the cache or the report.
    for path in [log, out, *cache.rglob("*")]:
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_a_batch_job_killed_while_polling_resumes_its_batch_and_pays_once(server_factory, caption_inputs, tmp_path):
    manifest, pairs, n = caption_inputs
    server = server_factory("--batch-seconds", "3")
    stage = {**api_stage(server), "backend": "openai-batch", "poll_s": 0.1}
    cache, out = tmp_path / "cache", tmp_path / "captions.parquet"
    proc = subprocess.Popen(caption_command(stage, manifest, pairs, cache, out), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not server.requests("batch-retrieve"):  # recorded, submitted, and now polled
        assert time.monotonic() < deadline and proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((tmp_path / "captions.batches.json").read_text())["batches"]
    assert len(state) == 1 and not state[0]["read"] and not out.exists()

    subprocess.run(caption_command(stage, manifest, pairs, cache, out), check=True, capture_output=True)
    assert (pd.read_parquet(out)["status"] == "ok").all()
    assert len(server.requests("files")) == 1 and len(server.requests("batches")) == 1  # one upload, one batch
    assert len(server.requests("batch-item")) == n


def test_an_unwritable_cache_folder_stops_the_shard_before_any_request(server_factory, caption_inputs, tmp_path):
    manifest, pairs, _ = caption_inputs
    server = server_factory()
    (tmp_path / "taken").write_text("a file where the cache folder should be")
    cache, out = tmp_path / "taken" / "cache", tmp_path / "captions.parquet"
    proc = subprocess.run(
        caption_command(api_stage(server), manifest, pairs, cache, out), capture_output=True, text=True
    )
    assert proc.returncode == 2 and f"result cache {cache} " in proc.stderr and "Traceback" not in proc.stderr
    assert server.requests() == [] and not out.exists()


def test_a_missing_api_key_is_a_clear_error(tmp_path, caption_inputs):
    manifest, pairs, _ = caption_inputs
    stage = {
        "backend": "openai",
        "model": "m",
        "base_url": "https://api.example.invalid/v1",
        "api_key_env": "FACAP_UNSET_KEY",
    }
    env = {k: v for k, v in os.environ.items() if k != "FACAP_UNSET_KEY"}
    command = caption_command(stage, manifest, pairs, tmp_path / "c", tmp_path / "o.parquet")
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "FACAP_UNSET_KEY, which is not set" in proc.stderr
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.e2e
def test_failed_answers_fail_the_run_and_one_command_asks_again_only_for_them(workflow_copy, server_factory):
    """Through the real workflow: an outage stops the run with no dataset; failures below the limit are
    listed; after the cause is fixed, `--forcerun caption modify` asks only for what failed."""
    target = "data/annotation/modifications_report.json"

    def run(base_url: str, max_failed: float, *extra: str, check: bool = True):
        stage = {"backend": "openai", "model": "test-llm", "base_url": base_url, "max_retries": 0}
        stage |= {"timeout_s": 5, "concurrency": 4, "max_failed_fraction": max_failed}
        (workflow_copy / "api.yaml").write_text(yaml.safe_dump({"annotation": {"modification": stage}}))
        args = ["--cores", "2", target, "--configfile", "config/presets/test.yaml", "api.yaml", *extra]
        return snakemake(workflow_copy, *args, check=check)

    # An outage (nothing listens on the port): the job fails naming the counts and the list of failures.
    outage = run("http://127.0.0.1:9/v1", 0.02, check=False)
    assert outage.returncode != 0
    log = (workflow_copy / "logs/annotation/modify_0.log").read_text()
    assert "answers failed" in log and "APIConnectionError" in log and "modify_0_failures.tsv" in log
    assert not list((workflow_copy / "data/annotation").glob("modifications*/*.parquet"))
    assert not (workflow_copy / "data/annotation/modifications.parquet").exists()

    # A server that fails a third of the questions for good, under a limit of one half: listed, not fatal.
    faulty = server_factory("--fail-rate", "0.33", "--faults", "500", "--persistent")
    run(faulty.base_url, 0.5)
    report = json.loads((workflow_copy / target).read_text())
    failed = report["failed"]
    assert 0 < failed < report["items"] and list(report["failures_by_reason"]) == [
        "InternalServerError: Error code: 500 - server error"
    ]
    assert len(pd.read_csv(workflow_copy / "logs/annotation/modify_0_failures.tsv", sep="\t")) > 0
    texts = pd.read_parquet(workflow_copy / "data/annotation/modifications.parquet")
    questions = texts.loc[texts["status"] != "ok", "key"].nunique()  # two pairs may ask the same question
    # One request per distinct question (the tiny world has pairs asking the same one), and one more
    # for each that failed.
    assert texts["key"].nunique() < len(texts)
    assert len(faulty.requests()) == texts["key"].nunique() + questions

    # The cause fixed: the documented command asks for the failed questions only, each once.
    fixed = server_factory()
    run(fixed.base_url, 0.02, "--forcerun", "caption", "modify")
    report = json.loads((workflow_copy / target).read_text())
    assert report["failed"] == 0 and report["answered_from_cache"] == report["items"] - failed
    assert len(fixed.requests()) == questions == len({r["item"] for r in fixed.requests()})
