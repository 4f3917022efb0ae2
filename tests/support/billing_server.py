#!/usr/bin/env python
"""The loopback OpenAI-compatible server of tests/support/fake_openai_server.py, which also writes
down what each request asks to be billed for, by its own count: a JSON line per chat request and
per line of a submitted batch file, with the model, the input tokens (about 4 characters of the
chat messages as JSON, the image's content part left out and counted as ``--image-tokens``) and
the most output tokens it may be billed (``max_tokens``).

    python tests/support/billing_server.py --port-file /tmp/port --log /tmp/requests.jsonl --image-tokens 85
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from the checkout

from tests.support import fake_openai_server as fake  # noqa: E402

IMAGE_TOKENS = int(os.environ.get("BILLING_IMAGE_TOKENS", "0"))


def bill_of(body: dict) -> dict:
    """What one request asks for: its text as sent (an image part is counted apart), and max_tokens."""
    messages, with_image = [], False
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):
            with_image |= any(part.get("type") == "image_url" for part in content)
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        messages.append({"role": m.get("role"), "content": content})
    input_tokens = len(json.dumps(messages)) // 4 + (IMAGE_TOKENS if with_image else 0)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return {"model": body.get("model"), "input_tokens": input_tokens, "max_tokens": max_tokens, "image": with_image}


class BillingHandler(fake.Handler):
    def chat(self, body: dict) -> None:
        self.state.record(endpoint="bill", via="chat", **bill_of(body))
        return super().chat(body)

    def create_batch(self, body: dict) -> None:
        for line in self.state.files[body["input_file_id"]].decode().splitlines():
            if line.strip():
                self.state.record(endpoint="bill", via="batch", **bill_of(json.loads(line)["body"]))
        return super().create_batch(body)


class BillingServer(fake.FakeServer):
    """The billing server in a subprocess on a free loopback port; ``stop()`` kills it by PID."""

    def __init__(self, tmp: Path, image_tokens: int, *args: str):
        self.log = tmp / f"requests-{secrets.token_hex(4)}.jsonl"
        port_file = tmp / f"port-{secrets.token_hex(4)}"
        command = [sys.executable, __file__, "--port-file", str(port_file), "--log", str(self.log), *args]
        self.proc = subprocess.Popen(command, env={**os.environ, "BILLING_IMAGE_TOKENS": str(image_tokens)})
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the billing server did not start")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


if __name__ == "__main__":
    fake.Handler = BillingHandler  # the fake server's main serves this handler
    fake.main()
