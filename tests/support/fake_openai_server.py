#!/usr/bin/env python
"""A small OpenAI-compatible server on loopback, for tests: chat completions (text or image input),
the Files and Batches endpoints, and injected faults.

Faults hit an item (the request's messages) on its first attempt only, with probability
``--fail-rate`` (seeded), so that every item succeeds once retried; with ``--persistent`` on every
attempt (an item that fails until the server is restarted without faults). Each request is logged as a
JSON line: time, endpoint, item, attempt, what was answered, whether the Authorization header
carried the expected key (never the key itself). Each batch item the server answers is logged as
``batch-item``: an item logged twice was paid for twice.

Batch faults: ``--create-faults slow,500-after,500-before`` hits the 1st, 2nd, 3rd create call
(``slow``: the batch is made, the answer comes after ``--hang`` seconds; ``500-after``: made, then
a 500; ``500-before``: a 500, nothing made); ``--upload-faults 500-after`` the same for uploads;
``--fail-first-batch`` fails the first batch with an error and no result; ``--flaky-gets N`` answers
every Nth GET with a 500.

    python tests/support/fake_openai_server.py --port-file /tmp/port --log /tmp/requests.jsonl --fail-rate 0.3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = ("429", "500", "timeout", "drop", "malformed", "empty")


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.log = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the server
        self.faults = [f for f in args.faults.split(",") if f]
        self.injected = 0
        self.create_faults = [f for f in args.create_faults.split(",") if f]
        self.upload_faults = [f for f in args.upload_faults.split(",") if f]
        self.gets = 0

    def next_fault(self, faults: list[str]) -> str:
        with self.lock:
            return faults.pop(0) if faults else ""

    def record(self, **entry) -> None:
        with self.lock:
            self.log.write(json.dumps({"t": time.time(), **entry}) + "\n")
            self.log.flush()

    def attempt(self, item: str) -> int:
        with self.lock:
            self.attempts[item] = self.attempts.get(item, 0) + 1
            return self.attempts[item]

    def fault_for(self, item: str, attempt: int) -> str | None:
        if (attempt > 1 and not self.args.persistent) or not self.faults:
            return None
        h = int(hashlib.sha256(f"{self.args.seed}:{item}".encode()).hexdigest(), 16)
        if (h % 10_000) / 10_000 >= self.args.fail_rate:
            return None
        with self.lock:  # kinds in turn, so that every kind shows up among a handful of faulty items
            self.injected += 1
            return self.faults[(self.injected - 1) % len(self.faults)]


def item_of(body: dict) -> str:
    text = json.dumps(body.get("messages"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def answer(body: dict, item: str) -> str:
    messages = body.get("messages") or []
    last = messages[-1]["content"] if messages else ""
    if isinstance(last, list):  # a caption request with an image
        return f"A red dress with long sleeves and a round neckline, item {item}."
    return f"The dress is red instead of blue, item {item}."


def completion(body: dict, content: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls
    state: State

    def log_message(self, *args):  # quiet
        pass

    def _json(self, code: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _auth_ok(self) -> bool:
        expected = self.state.args.expect_key_env and os.environ.get(self.state.args.expect_key_env)
        return not expected or self.headers.get("Authorization") == f"Bearer {expected}"

    def do_POST(self):  # noqa: N802
        raw = self._body()
        if self.path.endswith("/chat/completions"):
            return self.chat(json.loads(raw))
        if self.path.endswith("/files"):
            return self.upload(raw)
        if self.path.endswith("/batches"):
            return self.create_batch(json.loads(raw))
        if self.path.endswith("/cancel"):
            return self.cancel_batch(self.path.rstrip("/").split("/")[-2])
        self._json(404, {"error": {"message": f"no route {self.path}"}})

    def _visible(self, batch: dict) -> dict:
        if batch["status"] != "cancelled" and time.time() < batch["created_at"] + self.state.args.batch_seconds:
            return {**batch, "status": "in_progress", "output_file_id": None, "errors": None}
        return batch

    def do_GET(self):  # noqa: N802
        s = self.state
        with s.lock:
            s.gets += 1
            flaky = s.args.flaky_gets and s.gets % s.args.flaky_gets == 0
        if flaky:
            s.record(endpoint="flaky-get", path=self.path)
            return self._json(500, {"error": {"message": "server error (flaky GET)"}})
        path, _, query = self.path.partition("?")
        parts = path.rstrip("/").split("/")
        if parts[-1] == "batches":
            return self.list_batches(dict(p.split("=", 1) for p in query.split("&") if "=" in p))
        if len(parts) >= 2 and parts[-2] == "batches":
            batch = s.batches.get(parts[-1])
            if batch is None:
                return self._json(404, {"error": {"message": f"No batch found with id '{parts[-1]}'."}})
            s.record(endpoint="batch-retrieve", batch=batch["id"])
            return self._json(200, self._visible(batch))
        if parts[-1] == "content" and parts[-3] == "files":
            data = self.state.files[parts[-2]]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        self._json(404, {"error": {"message": f"no route {self.path}"}})

    def chat(self, body: dict) -> None:
        s = self.state
        item = item_of(body)
        attempt = s.attempt(item)
        fault = s.fault_for(item, attempt)
        with_image = isinstance(body["messages"][-1]["content"], list)
        s.record(
            endpoint="chat",
            item=item,
            attempt=attempt,
            fault=fault,
            auth_ok=self._auth_ok(),
            with_image=with_image,
            model=body.get("model"),
        )
        if s.args.latency:
            time.sleep(s.args.latency)
        if fault == "429":
            return self._json(
                429,
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                {"Retry-After": str(s.args.retry_after)},
            )
        if fault == "500":
            return self._json(500, {"error": {"message": "server error"}})
        if fault == "timeout":
            time.sleep(s.args.hang)
            return self._json(200, completion(body, answer(body, item)))
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return None
        if fault == "malformed":
            data = b'{"id": "chatcmpl-test", "choices": [ {"message": '
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        content = "" if fault == "empty" else answer(body, item)
        return self._json(200, completion(body, content))

    def list_batches(self, query: dict) -> None:
        s = self.state
        newest_first = sorted(s.batches.values(), key=lambda b: int(b["id"].split("-")[1]), reverse=True)
        if "after" in query:
            ids = [b["id"] for b in newest_first]
            newest_first = newest_first[ids.index(query["after"]) + 1 :]
        limit = int(query.get("limit", 20))
        page = [self._visible(b) for b in newest_first[:limit]]
        s.record(endpoint="batch-list", returned=len(page))
        self._json(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(newest_first) > limit,
            },
        )

    def cancel_batch(self, batch_id: str) -> None:
        batch = self.state.batches.get(batch_id)
        if batch is None:
            return self._json(404, {"error": {"message": f"No batch found with id '{batch_id}'."}})
        self.state.record(endpoint="batch-cancel", batch=batch_id)
        batch["status"] = "cancelled"
        return self._json(200, batch)

    def upload(self, raw: bytes) -> None:
        msg = BytesParser(policy=policy.default).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
        )
        content, purpose = b"", ""
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                content = part.get_payload(decode=True)
            elif name == "purpose":
                purpose = part.get_payload(decode=True).decode()
        with self.state.lock:
            file_id = f"file-{len(self.state.files) + 1}"
            self.state.files[file_id] = content
        self.state.record(endpoint="files", file=file_id, lines=content.count(b"\n"), auth_ok=self._auth_ok())
        if self.state.next_fault(self.state.upload_faults) == "500-after":
            return self._json(500, {"error": {"message": "server error after the upload"}})
        self._json(
            200,
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": "requests.jsonl",
                "purpose": purpose or "batch",
            },
        )

    def create_batch(self, body: dict) -> None:
        s = self.state
        fault = s.next_fault(s.create_faults)
        s.record(endpoint="batch-create", fault=fault or None)
        if fault == "500-before":
            return self._json(500, {"error": {"message": "server error before the batch was made"}})
        if s.args.fail_first_batch and not s.batches:
            return self._failed_batch(body)
        out_lines = []
        lines = [line for line in s.files[body["input_file_id"]].decode().splitlines() if line.strip()]
        # The first batch may expire with only half of its requests answered (--expire-first-batch).
        expire = s.args.expire_first_batch and not s.batches
        for line in lines[: len(lines) // 2] if expire else lines:
            request = json.loads(line)
            item = item_of(request["body"])
            s.record(endpoint="batch-item", item=item)
            out_lines.append(
                json.dumps(
                    {
                        "id": f"req-{request['custom_id']}",
                        "custom_id": request["custom_id"],
                        "response": {
                            "status_code": 200,
                            "request_id": "r",
                            "body": completion(request["body"], answer(request["body"], item)),
                        },
                        "error": None,
                    }
                )
            )
        with s.lock:
            out_id = f"file-{len(s.files) + 1}"
            s.files[out_id] = ("\n".join(out_lines) + "\n").encode()
        batch = self._new_batch(body, "expired" if expire else "completed", out_id, len(lines), len(out_lines), None)
        s.record(endpoint="batches", batch=batch["id"], requests=len(lines), auth_ok=self._auth_ok())
        self._answer_create(fault, batch)

    def _new_batch(self, body: dict, status: str, output: str | None, total: int, done: int, errors) -> dict:
        s = self.state
        with s.lock:
            batch_id = f"batch-{len(s.batches) + 1}"
            s.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"],
                "status": status,
                "output_file_id": output,
                "error_file_id": None,
                "created_at": int(time.time()),
                "request_counts": {"total": total, "completed": done, "failed": 0},
                "metadata": body.get("metadata"),
                "errors": errors,
            }
        return s.batches[batch_id]

    def _answer_create(self, fault: str, batch: dict) -> None:
        if fault == "slow":  # made, but the answer comes after the client gave up
            time.sleep(self.state.args.hang)
        if fault == "500-after":
            return self._json(500, {"error": {"message": "server error after the batch was made"}})
        try:
            return self._json(200, {**batch, "status": "validating"})
        except OSError:  # the client hung up: it never hears of this batch
            return None

    def _failed_batch(self, body: dict) -> None:
        error = {
            "code": "token_limit_exceeded",
            "message": "Enqueued token limit reached for gpt-4o-mini.",
            "param": None,
            "line": None,
        }
        batch = self._new_batch(body, "failed", None, 0, 0, {"object": "list", "data": [error]})
        self.state.record(endpoint="batches", batch=batch["id"], requests=0, auth_ok=self._auth_ok())
        self._json(200, {**batch, "status": "validating"})


class FakeServer:
    """The server in a subprocess on a free loopback port, for tests; ``stop()`` kills it by PID."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None):
        self.log = tmp / f"requests-{secrets.token_hex(4)}.jsonl"
        port_file = tmp / f"port-{secrets.token_hex(4)}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--port-file",
                str(port_file),
                "--log",
                str(self.log),
                *args,
            ],
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"

    def requests(self, endpoint: str = "chat") -> list[dict]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["endpoint"] == endpoint]

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)  # stopped by its PID, whatever it is doing
        self.proc.wait(timeout=10)


class Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default listen backlog (5) refuses a burst of concurrent clients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated kinds to inject")
    parser.add_argument("--retry-after", default="0", help="Retry-After header of a 429, seconds")
    parser.add_argument("--hang", type=float, default=3.0, help="seconds a 'timeout' fault hangs")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--persistent", action="store_true", help="a faulty item fails on every attempt")
    parser.add_argument("--batch-seconds", type=float, default=0.0, help="how long a batch stays in_progress")
    parser.add_argument("--expire-first-batch", action="store_true", help="the first batch expires half done")
    parser.add_argument("--create-faults", default="", help="faults of the create calls in turn: slow, 500-after, ...")
    parser.add_argument("--upload-faults", default="", help="faults of the uploads in turn: 500-after")
    parser.add_argument("--fail-first-batch", action="store_true", help="the first batch fails with an error")
    parser.add_argument("--flaky-gets", type=int, default=0, help="every Nth GET answers 500 (0: none)")
    parser.add_argument("--expect-key-env", default="", help="environment variable holding the expected API key")
    args = parser.parse_args()
    Handler.state = State(args)
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
