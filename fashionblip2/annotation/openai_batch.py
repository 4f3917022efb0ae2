"""The Batch API backend: the chat requests as JSONL batches, half the price, answers within 24 h.

A batch is paid for once it exists, so every step that can make one is written down first and
looked up before it is repeated. The state file beside the shard (``<shard>.batches.json``) holds,
per batch:

1. the request ids, before the upload (``uploading``: a kill here leaves at most an unused file,
   which costs nothing, and the requests go into a new batch);
2. the input file id, before the create call (``creating``: on every resume, and after any error of
   the create call, the server's batch list is searched for a batch of that input file, and the one
   found is adopted instead of creating another);
3. the batch id, once the server answers.

The create call is never retried by the client: its retries would each make a batch. Batches carry
metadata (this run's key, the shard, the request set), so a batch that the state file lost is still
found and adopted, and a duplicate (a create that succeeded after its answer was lost and the lookup
missed it) is cancelled and its answers read. Request ids are a hash of the question as the cache
keys it (the image by its file's SHA-256, not its re-encoded bytes), so they are the same on every
machine and a resumed batch's answers always find their requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashionblip2.annotation.backends import OnResult, Request
from fashionblip2.annotation.cache import request_key
from fashionblip2.annotation.openai_chat import RETRY_STATUSES, APISettings, OpenAIChat, backoff_s, short_error
from fashionblip2.common.io import write_json_atomic
from fashionblip2.common.issues import StopRun

log = logging.getLogger(__name__)

ENDED = ("completed", "failed", "expired", "cancelled")
STATE_VERSION = 2
ID_SCHEME = 2  # request ids from the cache key; entries without it (written before) hold hashes of the body
# How far back the server's batch list is searched for this run's batches: a batch ends within its
# 24 h window, so one older than this belongs to a run that never came back for it.
LOOKBACK_S = 3 * 86400
ENDPOINT = "/v1/chat/completions"


class BatchPending(StopRun):
    """Batches still running when the job must end; the next run resumes them."""


class BatchUnknown(StopRun):
    """A recorded batch that the server does not know (another key, project or base_url)."""


class BatchRefused(StopRun):
    """The server refused to create a batch (a 4xx: bad input, auth, quota): nothing was made."""


def request_id(model: str, keyed: dict[str, Any]) -> str:
    """A request's id in a batch: its cache key, cut to 32 hex digits. It depends on what is asked
    (the image by its file's digest), not on how the body is encoded on this machine."""
    return request_key(OpenAIBatch.name, model, keyed)[:32]


def legacy_request_id(body: dict[str, Any]) -> str:
    """The id batches recorded before ``ID_SCHEME`` 2 used: a hash of the body, image bytes included."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def chunk_digest(custom_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(custom_ids)).encode()).hexdigest()[:32]


@dataclass
class BatchState:
    """The state file of one shard; without a path it lives in memory only."""

    path: Path | None
    run_key: str
    shard: str
    batches: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> BatchState:
        if path is None:
            return cls(None, hashlib.sha256(f"{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()[:16], "-")
        path = Path(path)
        shard = f"{path.parent.name}/{path.name.split('.')[0]}"
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        # The key stays with the file: a moved working directory still finds its own batches.
        key = data.get("run_key") or hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return cls(path, key, data.get("shard", shard), data.get("batches", []))

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(
                self.path,
                {"version": STATE_VERSION, "run_key": self.run_key, "shard": self.shard, "batches": self.batches},
            )

    def metadata(self, entry: dict[str, Any]) -> dict[str, str]:
        return {"facap_run": self.run_key, "facap_shard": self.shard, "facap_chunk": entry["chunk"]}

    def open_entries(self) -> list[dict[str, Any]]:
        """Entries whose answers may still come: not read, not abandoned."""
        return [e for e in self.batches if not e.get("read") and not e.get("abandoned")]


def abandon(path: str | os.PathLike[str]) -> list[str]:
    """Mark every open batch of a state file as abandoned, so that the next run asks their requests
    again; returns their ids. For batches the server does not know (made with another key, project
    or base_url): a batch still running elsewhere is paid for again."""
    state = BatchState.load(path)
    if state.path is None or not state.path.exists():
        raise FileNotFoundError(f"no batch state file at {path}")
    gone = []
    for entry in state.open_entries():
        entry["abandoned"] = True
        gone.append(entry.get("batch_id") or f"(not created: input file {entry.get('input_file_id')})")
    state.save()
    return gone


def _errors(batch: Any) -> list[str]:
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    return [": ".join(str(x) for x in (getattr(e, "code", None), getattr(e, "message", None)) if x) for e in data]


def _result(row: dict[str, Any]) -> tuple[str | None, str | None]:
    response = row.get("response") or {}
    if response.get("status_code") == 200:
        choices = response.get("body", {}).get("choices") or [{}]
        text = choices[0].get("message", {}).get("content")
        return text, None if text else "empty content"
    error = row.get("error") or response.get("body", {}).get("error") or {}
    return None, f"batch error: {error.get('message', response.get('status_code'))}"


class OpenAIBatch(OpenAIChat):
    """The chat requests through the Batch API; see the module's doc for how nothing is paid twice."""

    name = "openai-batch"

    def __init__(
        self,
        settings: APISettings,
        *,
        with_image: bool,
        poll_s: float,
        max_wait_s: float,
        max_requests: int,
        max_bytes: int,
        state_path: str | os.PathLike[str] | None = None,
    ):
        super().__init__(settings, with_image=with_image)
        self.poll_s = poll_s
        self.max_wait_s = max_wait_s
        self.state_path = Path(state_path) if state_path else None
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.started = time.monotonic()
        self.first_pass_s: float | None = None
        self.adopted = 0  # batches found on the server rather than created (a lost answer or state)
        self.duplicates = 0  # batches made twice for one input file, cancelled

    def time_for_another_pass(self) -> bool:
        """Whether a second batch (for rejected answers) can end before this job's time runs out,
        judged by how long the first one took; if not, the next run asks them."""
        if self.first_pass_s is None:
            return True
        return time.monotonic() - self.started + self.first_pass_s < self.max_wait_s

    def _client(self):
        import openai

        # Uploads, lookups and downloads are safe to retry; the create call turns retries off itself.
        return openai.OpenAI(
            base_url=self.settings.base_url,
            api_key=self.settings.api_key(),
            max_retries=self.settings.max_retries,
            timeout=self.settings.timeout_s,
        )

    # -- the server's batch list ---------------------------------------------------------------------

    def _server_batches(self, client: Any, since: float) -> Iterator[Any]:
        """The server's batches created at or after ``since`` (epoch seconds), newest first."""
        for batch in client.batches.list(limit=100):
            if batch.created_at < since:
                return
            yield batch

    def _look_up(self, client: Any, state: BatchState, entry: dict[str, Any]) -> Any | None:
        """The batch the server made from this entry's input file, if any."""
        since = entry["recorded_at"] - 3600  # an hour of clock difference between here and the server
        return next((b for b in self._server_batches(client, since) if b.input_file_id == entry["input_file_id"]), None)

    def _adopt_strays(self, client: Any, state: BatchState) -> None:
        """Batches of this run and shard that the state file does not hold: a lost record is adopted
        (its request ids read from its input file); a second batch of a recorded input file is a
        duplicate: cancelled, and its answers read like any other's."""
        known = {e.get("batch_id") for e in state.batches}
        by_file = {e["input_file_id"]: e for e in state.batches if e.get("input_file_id")}
        for batch in self._server_batches(client, time.time() - LOOKBACK_S):
            meta = getattr(batch, "metadata", None) or {}
            if batch.id in known or meta.get("facap_run") != state.run_key or meta.get("facap_shard") != state.shard:
                continue
            original = by_file.get(batch.input_file_id)
            if original is not None and not original.get("batch_id"):  # its create call's answer was lost
                self.adopted += 1
                log.warning(
                    "batch %s of input file %s was made before its answer was lost: adopted",
                    batch.id,
                    batch.input_file_id,
                )
                original.update(batch_id=batch.id, status=batch.status)
                known.add(batch.id)
                continue
            entry = {
                "batch_id": batch.id,
                "input_file_id": batch.input_file_id,
                "chunk": meta.get("facap_chunk", ""),
                "status": batch.status,
                "recorded_at": batch.created_at,
                "read": False,
                "id_scheme": ID_SCHEME,
            }
            if original is not None:
                self.duplicates += 1
                entry["duplicate_of"] = original["batch_id"]
                log.warning("batch %s duplicates %s (same input file): cancelling it", batch.id, original["batch_id"])
                if batch.status not in ENDED:
                    client.batches.cancel(batch.id)
                entry["custom_ids"] = original["custom_ids"]
            else:
                self.adopted += 1
                log.warning("batch %s of this shard is on the server but not in %s: adopting it", batch.id, state.path)
                lines = client.files.content(batch.input_file_id).text.splitlines()
                entry["custom_ids"] = [json.loads(line)["custom_id"] for line in lines if line.strip()]
            state.batches.append(entry)
            known.add(batch.id)
        state.save()

    # -- making a batch ------------------------------------------------------------------------------

    def _submit(self, client: Any, state: BatchState, lines: list[str], custom_ids: list[str]) -> dict[str, Any]:
        data = ("\n".join(lines) + "\n").encode()
        entry = {
            "chunk": chunk_digest(custom_ids),
            "custom_ids": custom_ids,
            "input_file_id": None,
            "batch_id": None,
            "status": "uploading",
            "recorded_at": time.time(),
            "read": False,
            "id_scheme": ID_SCHEME,
        }
        state.batches.append(entry)
        state.save()
        uploaded = client.files.create(file=(f"facap-{entry['chunk'][:12]}.jsonl", data), purpose="batch")
        entry["input_file_id"] = uploaded.id
        entry["status"] = "creating"
        state.save()  # from here on a batch may exist: the next run looks for it before making one
        self._create(client, state, entry)
        log.info("batch %s submitted: %d requests, %.1f MB", entry["batch_id"], len(custom_ids), len(data) / 1e6)
        return entry

    def _create(self, client: Any, state: BatchState, entry: dict[str, Any]) -> None:
        """Create the entry's batch, or adopt the one an earlier attempt made."""
        import openai

        once = client.with_options(max_retries=0)
        for attempt in range(self.settings.max_retries + 1):
            try:
                batch = once.batches.create(
                    input_file_id=entry["input_file_id"],
                    endpoint=ENDPOINT,
                    completion_window="24h",
                    metadata=state.metadata(entry),
                )
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in RETRY_STATUSES:
                    entry["status"] = "refused"
                    entry["abandoned"] = True
                    state.save()
                    raise BatchRefused(
                        f"the server at {self.settings.base_url or 'api.openai.com'} refused the batch of input "
                        f"file {entry['input_file_id']} ({e.status_code}: {short_error(e)}); nothing was made"
                    ) from None
                error: Exception = e
            except Exception as e:  # noqa: BLE001 - a timeout or a lost answer: the batch may exist all the same
                error = e
            else:
                entry.update(batch_id=batch.id, status=batch.status)
                state.save()
                return
            log.warning(
                "creating the batch of input file %s: %s; looking it up before trying again",
                entry["input_file_id"],
                short_error(error),
            )
            found = self._wait_for(client, state, entry)
            if found is not None:
                self.adopted += 1
                log.warning("batch %s was made after all: adopted, not made again", found.id)
                entry.update(batch_id=found.id, status=found.status)
                state.save()
                return
            time.sleep(backoff_s(attempt, None))
        raise StopRun(
            f"could not create the batch of input file {entry['input_file_id']} after "
            f"{self.settings.max_retries + 1} tries; it is recorded in {state.path}: the next run looks it up "
            "on the server before making it"
        )

    def _wait_for(self, client: Any, state: BatchState, entry: dict[str, Any]) -> Any | None:
        """Look the entry's batch up for as long as a create call may take to land."""
        deadline = time.monotonic() + self.settings.timeout_s
        while True:
            found = self._look_up(client, state, entry)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(min(1.0, self.settings.timeout_s / 4))

    # -- one pass ------------------------------------------------------------------------------------

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        if not requests:
            return
        import openai

        pass_started = time.monotonic()
        client = self._client()
        ids = [request_id(self.model, r.keyed) for r in requests]
        index: dict[str, list[int]] = {}  # a batch may hold a question once: its answer goes to every asker
        for i, cid in enumerate(ids):
            index.setdefault(cid, []).append(i)
        state = BatchState.load(self.state_path)
        # Batches recorded before ID_SCHEME 2 name their requests by a hash of the body.
        alias: dict[str, str] = {}
        if any(e.get("id_scheme") != ID_SCHEME for e in state.open_entries()):
            alias = {legacy_request_id(self.body(r)): cid for r, cid in zip(requests, ids, strict=True)}

        def own(entry: dict[str, Any]) -> set[str]:
            return {alias.get(c, c) for c in entry["custom_ids"]} & index.keys()

        answered: set[str] = set()
        reasons: dict[str, str] = {}

        def read(entry: dict[str, Any], batch: Any) -> None:
            """Hand over every result of an ended batch that a current request asks for."""
            for file_id in (batch.output_file_id, batch.error_file_id):
                if not file_id:
                    continue
                for line in client.files.content(file_id).text.splitlines():
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    cid = alias.get(row["custom_id"], row["custom_id"])
                    if cid not in index or cid in answered:
                        continue
                    answered.add(cid)
                    text, error = _result(row)
                    for i in index[cid]:
                        on_result(i, text, error)
            errors = _errors(batch)
            if errors:
                entry["errors"] = errors
                log.warning("batch %s %s: %s", batch.id, batch.status, "; ".join(errors))
            why = f"batch {batch.status}" + (f": {'; '.join(errors)}" if errors else ": no result")
            for cid in own(entry):
                reasons.setdefault(cid, why)
            entry.update(status=batch.status, read=True)
            state.save()

        # A kill during an upload left no batch: those requests are simply asked again.
        state.batches = [e for e in state.batches if e.get("status") != "uploading"]
        live = [e for e in state.open_entries() if own(e)]
        waiting_on = {cid for e in live for cid in own(e)}
        todo = [asking[0] for cid, asking in index.items() if cid not in waiting_on]
        creating = [e for e in live if not e.get("batch_id")]
        if todo or creating:
            # Before anything new is made: what the server already holds for this shard.
            self._adopt_strays(client, state)
            live = [e for e in state.open_entries() if own(e)]
            waiting_on = {cid for e in live for cid in own(e)}
            todo = [asking[0] for cid, asking in index.items() if cid not in waiting_on]
        for entry in live:
            if not entry.get("batch_id"):
                found = self._look_up(client, state, entry)
                if found is not None:
                    self.adopted += 1
                    log.warning(
                        "batch %s of input file %s was made before a kill: adopted", found.id, found.input_file_id
                    )
                    entry.update(batch_id=found.id, status=found.status)
                    state.save()
                else:
                    self._create(client, state, entry)
            else:
                log.info("resuming batch %s (%d requests)", entry["batch_id"], len(entry["custom_ids"]))
        # An expired or failed batch leaves requests without an answer: those, and only those, go again.
        for lines, chunk_ids in self._chunks(requests, ids, todo):
            live.append(self._submit(client, state, lines, chunk_ids))
        deadline = self.started + self.max_wait_s
        while live:
            for entry in list(live):
                try:
                    batch = client.batches.retrieve(entry["batch_id"])
                except openai.NotFoundError:
                    raise BatchUnknown(
                        f"batch {entry['batch_id']}, recorded in {state.path}, is unknown to the server at "
                        f"{self.settings.base_url or 'api.openai.com'} (made with another API key, project or "
                        "base_url?). Set those back and rerun to resume it; or give it up with "
                        f"`fashionblip2 batches abandon {state.path}`: the next run then asks again only the "
                        "requests without an answer (a batch still running elsewhere is paid for twice)"
                    ) from None
                if batch.status in ENDED:
                    log.info("batch %s: %s", batch.id, batch.status)
                    read(entry, batch)
                    live.remove(entry)
            if live:
                if time.monotonic() > deadline:
                    pending = ", ".join(e["batch_id"] for e in live)
                    raise BatchPending(
                        f"batch(es) {pending} not ended after {self.max_wait_s:.0f} s (annotation max_wait_s); "
                        f"they are recorded in {state.path}: rerun to resume them, nothing is submitted again"
                    )
                time.sleep(self.poll_s)
        for cid, asking in index.items():
            if cid not in answered:
                for i in asking:
                    on_result(i, None, reasons.get(cid, "batch ended: no result"))
        if self.first_pass_s is None:
            self.first_pass_s = time.monotonic() - pass_started

    def _chunks(
        self, requests: list[Request], ids: list[str], todo: list[int]
    ) -> Iterator[tuple[list[str], list[str]]]:
        """The JSONL lines of ``todo`` and their ids, cut so that no batch exceeds the request or size limit."""
        lines: list[str] = []
        chunk_ids: list[str] = []
        size = 0
        for i in todo:
            line = json.dumps({"custom_id": ids[i], "method": "POST", "url": ENDPOINT, "body": self.body(requests[i])})
            if lines and (len(lines) >= self.max_requests or size + len(line) + 1 > self.max_bytes):
                yield lines, chunk_ids
                lines, chunk_ids, size = [], [], 0
            lines.append(line)
            chunk_ids.append(ids[i])
            size += len(line) + 1
        if lines:
            yield lines, chunk_ids
