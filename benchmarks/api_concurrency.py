#!/usr/bin/env python
"""Throughput of the `openai` annotation backend against an OpenAI-compatible server on loopback
with a fixed latency per request (default 200 ms): requests per second at the configured
concurrency next to one request at a time, in one run. Writes JSON.

    python benchmarks/api_concurrency.py                  # 32 in flight vs 1, 200 ms per request
    python benchmarks/api_concurrency.py --concurrency 64 --requests 640
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402,F401  (imported before anything is timed)

from fashionblip2.annotation.backends import Request  # noqa: E402
from fashionblip2.annotation.cache import ResultCache  # noqa: E402
from fashionblip2.annotation.openai_chat import APISettings, OpenAIChat  # noqa: E402
from fashionblip2.annotation.runner import annotate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def start_server(tmp: Path, latency: float) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests/support/fake_openai_server.py"),
            "--port-file",
            str(port_file),
            "--log",
            str(tmp / "requests.jsonl"),
            "--latency",
            str(latency),
        ]
    )
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/v1"


def run(base_url: str, concurrency: int, n: int, tag: str, tmp: Path) -> float:
    backend = OpenAIChat(
        APISettings(
            base_url=base_url,
            model="bench",
            api_key_env="OPENAI_API_KEY",
            concurrency=concurrency,
            max_retries=6,
            timeout_s=30,
            max_tokens=96,
            temperature=0.2,
        ),
        with_image=False,
    )
    requests = [Request({"messages": [{"role": "user", "content": f"{tag} request {i}"}]}) for i in range(n)]
    t = time.perf_counter()
    outcomes = annotate(requests, backend, ResultCache(tmp / f"cache-{tag}"), lambda text: None, progress=False)
    seconds = time.perf_counter() - t
    assert all(o.status == "ok" for o in outcomes)
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=320, help="requests at the configured concurrency")
    parser.add_argument("--serial-requests", type=int, default=20, help="requests one at a time")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--out", default="benchmarks/out/api_concurrency.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, base_url = start_server(tmp, args.latency)
        try:
            serial = run(base_url, 1, args.serial_requests, "serial", tmp)
            concurrent = run(base_url, args.concurrency, args.requests, "concurrent", tmp)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    ceiling = args.concurrency / args.latency
    print(f"\nOpenAI-compatible backend, {args.latency * 1000:.0f} ms per request (loopback server)")
    print(f"{'mode':28} {'requests/s':>11} {'x serial':>9}")
    print(f"{'one at a time':28} {serial:11.1f} {1.0:9.2f}")
    print(f"{f'concurrency {args.concurrency}':28} {concurrent:11.1f} {concurrent / serial:9.2f}")
    print(f"(ceiling at concurrency {args.concurrency}: {ceiling:.0f} requests/s)")
    record = {
        "benchmark": "api_concurrency",
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "serial_rps": serial,
        "concurrent_rps": concurrent,
        "speedup": concurrent / serial,
        "ceiling_rps": ceiling,
        "cpus": os.cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
