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

from fashionblip2.annotation.backends import Request
from fashionblip2.annotation.cache import CacheWriteError, ResultCache
from fashionblip2.annotation.openai_batch import BatchPending, OpenAIBatch
from fashionblip2.annotation.openai_chat import APISettings, OpenAIChat
from fashionblip2.annotation.runner import annotate
from fashionblip2.annotation.validation import check_caption, check_modification
from fashionblip2.config import resolved_sources
from fashionblip2.sources.manifest import build_manifest
from tests.conftest import REPO, snakemake, source_settings
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


CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def settings(server: FakeServer, **kw) -> APISettings:
    """The default config's modification settings, pointed at the server, with quick timeouts."""
    section = CONFIG["annotation"]["modification"]
    values = {
        "api_key_env": section["api_key_env"],
        "concurrency": section["concurrency"],
        "max_retries": 6,
        "timeout_s": 1.0,
        "max_tokens": section["max_new_tokens"],
        "temperature": section["temperature"],
        **kw,
    }
    return APISettings(base_url=server.base_url, model="test-model", **values)


def batch_backend(server: FakeServer, state: Path | None = None, *, max_wait_s: float = 600, **kw) -> OpenAIBatch:
    limits = {"max_requests": 50_000, "max_bytes": 200_000_000}
    keys = {k: kw.pop(k) for k in list(kw) if k in limits}
    return OpenAIBatch(
        settings(server, **kw),
        with_image=False,
        poll_s=0.05,
        max_wait_s=max_wait_s,
        state_path=state,
        **(limits | keys),
    )


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
    backend = batch_backend(server)
    cache = ResultCache(tmp_path / "c")
    outcomes = annotate(modification_requests(5), backend, cache, lambda t: check_modification(t, 60), progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 5
    assert [o.text.rsplit(" ", 1)[1] for o in outcomes] == [r["item"] + "." for r in server.requests("batch-item")]
    assert len(server.requests("files")) == 1 and len(server.requests("batches")) == 1
    assert annotate(modification_requests(5), backend, cache, lambda t: None, progress=False)[0].cached


def test_a_batch_over_the_limits_is_split_and_each_part_tracked(server_factory, tmp_path):
    server = server_factory()
    state = tmp_path / "shard.batches.json"
    backend = batch_backend(server, state, max_requests=2)
    outcomes = annotate(modification_requests(5), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 5
    assert [r["requests"] for r in server.requests("batches")] == [2, 2, 1]
    recorded = json.loads(state.read_text())["batches"]
    assert [len(b["custom_ids"]) for b in recorded] == [2, 2, 1] and all(b["read"] for b in recorded)
    assert all(b["input_file_id"].startswith("file-") for b in recorded)


def test_a_question_asked_twice_goes_into_a_batch_once(server_factory, tmp_path):
    server = server_factory()
    backend = batch_backend(server)
    requests = modification_requests(3)
    answers: dict[int, str | None] = {}
    backend.generate([*requests, requests[1]], lambda i, text, error: answers.setdefault(i, text))
    assert [r["requests"] for r in server.requests("batches")] == [3]  # custom ids are unique in a file
    assert sorted(answers) == [0, 1, 2, 3] and answers[3] == answers[1] is not None


def test_an_expired_batch_is_resubmitted_only_for_what_has_no_answer(server_factory, tmp_path):
    server = server_factory("--expire-first-batch")
    backend = batch_backend(server, tmp_path / "s.json")
    outcomes = annotate(modification_requests(6), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 6
    assert [r["requests"] for r in server.requests("batches")] == [6, 3]
    assert len(server.requests("batch-item")) == 6  # every question answered once


def test_a_batch_that_outlives_the_job_is_left_for_the_next_run(server_factory, tmp_path):
    server = server_factory("--batch-seconds", "30")
    backend = batch_backend(server, tmp_path / "s", max_wait_s=0.5)
    with pytest.raises(BatchPending, match="rerun to resume them"):
        annotate(modification_requests(3), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert len(server.requests("batches")) == 1


@pytest.fixture
def caption_inputs(tiny_world, tmp_path):
    """A manifest and pairs of the tiny world, as the caption rule reads them."""
    world, _ = tiny_world
    sources = resolved_sources(source_settings(fashion200k="synthetic"), world)
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
        "--job-options",
        "{}",
        "--prices",
        json.dumps(CONFIG["annotation"]["prices"]),
        "--prompt",
        str(REPO / "prompts/caption.yaml"),
        "--manifest",
        str(manifest),
        "--pairs",
        str(pairs),
        "--cache",
        str(cache),
        "--batch-state",
        str(out.with_name(f"{out.stem}.batches.json")),
        "--out",
        str(out),
        "--no-progress",
    ]


def api_stage(server: FakeServer, concurrency: int = 4, **kw) -> dict:
    """The default config's caption section, through the API at the server."""
    return {
        **CONFIG["annotation"]["caption"],
        "backend": "openai",
        "model": "test-vlm",
        "base_url": server.base_url,
        "api_key_env": "FACAP_TEST_KEY",
        "concurrency": concurrency,
        "max_retries": 2,
        "timeout_s": 5,
        **kw,
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
        **CONFIG["annotation"]["caption"],
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
    listed; after the cause is fixed, `--forcerun caption modification` asks only for what failed."""
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
    log = (workflow_copy / "logs/modification/0.log").read_text()
    assert "answers failed" in log and "APIConnectionError" in log and "logs/modification/0_failures.tsv" in log
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
    assert len(pd.read_csv(workflow_copy / "logs/modification/0_failures.tsv", sep="\t")) > 0
    texts = pd.read_parquet(workflow_copy / "data/annotation/modifications.parquet")
    questions = texts.loc[texts["status"] != "ok", "key"].nunique()  # two pairs may ask the same question
    # One request per distinct question (the tiny world has pairs asking the same one), and one more
    # for each that failed.
    assert texts["key"].nunique() < len(texts)
    assert len(faulty.requests()) == texts["key"].nunique() + questions

    # The cause fixed: the documented command asks for the failed questions only, each once.
    fixed = server_factory()
    run(fixed.base_url, 0.02, "--forcerun", "caption", "modification")
    report = json.loads((workflow_copy / target).read_text())
    assert report["failed"] == 0 and report["answered_from_cache"] == report["items"] - failed
    assert len(fixed.requests()) == questions == len({r["item"] for r in fixed.requests()})


# --- openai-batch never pays twice ------------------------------------------------------------------


def paid_twice(server: FakeServer) -> int:
    """Questions the server answered in more than one batch (each answer is billed)."""
    items = [r["item"] for r in server.requests("batch-item")]
    return len(items) - len(set(items))


@pytest.mark.parametrize("fault", ["slow", "500-after", "500-before"])
def test_a_create_call_that_fails_or_answers_late_makes_one_batch(server_factory, tmp_path, fault):
    """`slow`: the batch is made and the answer comes after timeout_s; `500-after`: made, then an error;
    `500-before`: an error and nothing made. The client's retries would make a batch each time."""
    server = server_factory("--create-faults", fault, "--hang", "2.5")
    state = tmp_path / "0.batches.json"
    backend = batch_backend(server, state, timeout_s=1.0)
    outcomes = annotate(modification_requests(6), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 6
    assert len(server.requests("batches")) == 1 and paid_twice(server) == 0
    assert len(server.requests("batch-create")) == (2 if fault == "500-before" else 1)
    assert backend.adopted == (0 if fault == "500-before" else 1)
    (entry,) = json.loads(state.read_text())["batches"]
    assert entry["batch_id"] == "batch-1" and entry["read"] and entry["input_file_id"].startswith("file-")


def test_a_kill_between_create_and_record_adopts_the_batch(server_factory, caption_inputs, tmp_path):
    manifest, pairs, n = caption_inputs
    server = server_factory("--create-faults", "slow", "--hang", "30")
    stage = api_stage(server, backend="openai-batch", poll_s=0.1, timeout_s=60)
    cache, out = tmp_path / "cache", tmp_path / "captions.parquet"
    proc = subprocess.Popen(caption_command(stage, manifest, pairs, cache, out), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not server.requests("batches"):  # the server has made the batch and not yet answered
        assert time.monotonic() < deadline and proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (entry,) = json.loads((tmp_path / "captions.batches.json").read_text())["batches"]
    assert entry["status"] == "creating" and entry["batch_id"] is None and entry["input_file_id"]

    rerun = subprocess.run(caption_command(stage, manifest, pairs, cache, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "batch-1" in rerun.stderr and "adopted" in rerun.stderr
    assert (pd.read_parquet(out)["status"] == "ok").all()
    assert len(server.requests("batches")) == 1 and len(server.requests("batch-create")) == 1
    assert len(server.requests("batch-item")) == n and paid_twice(server) == 0


def test_a_batch_the_state_file_lost_is_found_by_its_metadata(server_factory, tmp_path):
    # The batch must still be running when the first run stops waiting (0.2 s): 5 s leaves a loaded
    # CI machine room (at 1 s it once finished first, and nothing was pending).
    server = server_factory("--batch-seconds", "5")
    state = tmp_path / "0.batches.json"
    with pytest.raises(BatchPending):
        annotate(
            modification_requests(4),
            batch_backend(server, state, max_wait_s=0.2),
            ResultCache(tmp_path / "c"),
            lambda t: None,
            progress=False,
        )
    recorded = json.loads(state.read_text())
    state.write_text(json.dumps({**recorded, "batches": []}))  # the record is lost, the run key is not
    backend = batch_backend(server, state)
    outcomes = annotate(modification_requests(4), backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 4 and backend.adopted == 1
    assert len(server.requests("batches")) == 1 and paid_twice(server) == 0


def test_a_failed_batch_names_its_reason(server_factory, tmp_path):
    server = server_factory("--fail-first-batch")
    state = tmp_path / "0.batches.json"
    answers: dict[int, tuple] = {}
    batch_backend(server, state).generate(modification_requests(3), lambda i, t, e: answers.setdefault(i, (t, e)))
    reason = "batch failed: token_limit_exceeded: Enqueued token limit reached for gpt-4o-mini."
    assert answers == {i: (None, reason) for i in range(3)}
    assert json.loads(state.read_text())["batches"][0]["errors"] == [reason.removeprefix("batch failed: ")]
    # The runner asks them again in a new batch: the failed one answered nothing, so nothing is paid twice.
    outcomes = annotate(
        modification_requests(3),
        batch_backend(server, state),
        ResultCache(tmp_path / "c"),
        lambda t: None,
        progress=False,
    )
    assert [o.status for o in outcomes] == ["ok"] * 3 and paid_twice(server) == 0


def test_a_batch_the_server_does_not_know_stops_with_what_to_do_and_can_be_abandoned(server_factory, tmp_path):
    from fashionblip2.annotation.openai_batch import BatchUnknown

    first = server_factory("--batch-seconds", "60")
    state = tmp_path / "0.batches.json"
    with pytest.raises(BatchPending):
        annotate(
            modification_requests(4),
            batch_backend(first, state, max_wait_s=0.2),
            ResultCache(tmp_path / "c"),
            lambda t: None,
            progress=False,
        )
    other = server_factory()  # another base_url: it never made that batch
    with pytest.raises(BatchUnknown) as e:
        annotate(
            modification_requests(4),
            batch_backend(other, state),
            ResultCache(tmp_path / "c"),
            lambda t: None,
            progress=False,
        )
    message = str(e.value)
    assert str(state) in message and other.base_url in message and f"fashionblip2 batches abandon {state}" in message

    abandon = subprocess.run(
        [sys.executable, "-m", "fashionblip2.cli", "batches", "abandon", str(state)], capture_output=True, text=True
    )
    assert abandon.returncode == 0 and "batch-1" in abandon.stdout, abandon.stderr
    outcomes = annotate(
        modification_requests(4),
        batch_backend(other, state),
        ResultCache(tmp_path / "c"),
        lambda t: None,
        progress=False,
    )
    assert [o.status for o in outcomes] == ["ok"] * 4 and len(other.requests("batches")) == 1
    assert [b.get("abandoned", False) for b in json.loads(state.read_text())["batches"]] == [True, False]


def test_request_ids_do_not_depend_on_how_this_machine_encodes_the_image(
    server_factory, tiny_world, tmp_path, monkeypatch
):
    """A retry on a node with another Pillow or zlib re-encodes the image differently: the batch it
    resumes must still be recognised."""
    from fashionblip2.annotation import openai_chat
    from fashionblip2.annotation.cache import file_digest

    world, _ = tiny_world
    images = sorted((world / "fashioniq/images").glob("*.png"))[:3]
    requests = [
        Request(
            {"messages": [{"role": "user", "content": "Describe it."}], "image_sha256": file_digest(p)},
            {"path": str(p)},
        )
        for p in images
    ]
    server = server_factory("--batch-seconds", "1")
    state = tmp_path / "0.batches.json"

    def backend(**kw):
        return OpenAIBatch(
            settings(server),
            with_image=True,
            poll_s=0.05,
            state_path=state,
            max_requests=50_000,
            max_bytes=200_000_000,
            **kw,
        )

    with pytest.raises(BatchPending):
        annotate(requests, backend(max_wait_s=0.2), ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    encoded = openai_chat.image_data_url
    monkeypatch.setattr(openai_chat, "image_data_url", lambda path: encoded(path) + "=")  # other bytes, same image
    outcomes = annotate(requests, backend(max_wait_s=60), ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 3 and len(server.requests("batches")) == 1


def test_batches_recorded_with_the_old_request_ids_still_resume(server_factory, tmp_path):
    """A state file written before request ids came from the cache key (a hash of the whole body)."""
    import openai

    from fashionblip2.annotation.openai_batch import legacy_request_id

    server = server_factory("--batch-seconds", "1")
    backend = batch_backend(server, tmp_path / "0.batches.json")
    requests = modification_requests(3)
    lines = [
        json.dumps(
            {
                "custom_id": legacy_request_id(backend.body(r)),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": backend.body(r),
            }
        )
        for r in requests
    ]
    client = openai.OpenAI(base_url=server.base_url, api_key="x")
    uploaded = client.files.create(file=("r.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    ids = [json.loads(line)["custom_id"] for line in lines]
    entry = {
        "batch_id": batch.id,
        "input_file_id": uploaded.id,
        "custom_ids": ids,
        "status": "validating",
        "read": False,
    }
    (tmp_path / "0.batches.json").write_text(json.dumps({"batches": [entry]}))
    outcomes = annotate(requests, backend, ResultCache(tmp_path / "c"), lambda t: None, progress=False)
    assert [o.status for o in outcomes] == ["ok"] * 3 and len(server.requests("batches")) == 1


def test_kills_and_faults_at_every_step_pay_for_no_question_twice(server_factory, caption_inputs, tmp_path):
    """A server that fails uploads, creates and GETs, and a job killed after each kind of step in turn
    (an upload, a create, a lookup, a poll), then run to the end: every question answered once."""
    manifest, pairs, n = caption_inputs
    server = server_factory(
        "--create-faults",
        "slow,500-after,500-before,slow",
        "--upload-faults",
        "500-after,500-after",
        "--flaky-gets",
        "4",
        "--batch-seconds",
        "2",
        "--hang",
        "1.5",
    )
    stage = api_stage(
        server, backend="openai-batch", poll_s=0.1, timeout_s=1, max_retries=4, batch_max_requests=max(2, n // 5)
    )
    cache, out = tmp_path / "cache", tmp_path / "captions.parquet"
    kills = 0
    for step in ["files", "batch-create", "batches", "batch-list", "batch-retrieve", "files", "batch-create"]:
        seen = len(server.requests(step))
        proc = subprocess.Popen(caption_command(stage, manifest, pairs, cache, out), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(server.requests(step)) <= seen and proc.poll() is None:
            assert time.monotonic() < deadline, f"no {step} within 60 s"
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if out.exists():
            break
    assert kills >= 4
    if not out.exists():
        done = subprocess.run(caption_command(stage, manifest, pairs, cache, out), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    result = pd.read_parquet(out)
    assert (result["status"] == "ok").all() and len(result) == n
    assert len(server.requests("batch-item")) >= n and paid_twice(server) == 0


def test_a_request_whose_answer_was_lost_is_asked_again_once_at_most_and_counted(server_factory, tmp_path):
    """A read timeout after the server answered (and billed): one more request per question, marked."""
    once = server_factory("--fail-rate", "1.0", "--faults", "timeout", "--hang", "1.5")
    backend = OpenAIChat(settings(once, concurrency=4, timeout_s=0.5), with_image=False)
    outcomes = annotate(modification_requests(4), backend, ResultCache(tmp_path / "a"), lambda t: None, progress=False)
    assert [(o.status, o.reasked) for o in outcomes] == [("ok", True)] * 4
    asked = [r["item"] for r in once.requests()]
    assert sorted(asked.count(i) for i in set(asked)) == [2] * 4

    always = server_factory("--fail-rate", "1.0", "--faults", "timeout", "--hang", "1.5", "--persistent")
    backend = OpenAIChat(settings(always, concurrency=4, timeout_s=0.5), with_image=False)
    outcomes = annotate(modification_requests(4), backend, ResultCache(tmp_path / "b"), lambda t: None, progress=False)
    assert all(o.status == "failed" and o.reasked for o in outcomes)
    asked = [r["item"] for r in always.requests()]
    # Not a third time, not even by the runner's second pass over failed items.
    assert sorted(asked.count(i) for i in set(asked)) == [2] * 4
