"""Chat completions against any OpenAI-compatible server (OpenAI, vLLM, ...), many requests in flight.

Retries are decided here, not by the client, because they differ in what they cost:

- the server said no (429, 408, 409, 5xx) or the request never left (connection refused, connect
  timeout): nothing was answered, so it is asked again, up to ``max_retries`` times, after the
  server's Retry-After or an exponential backoff;
- the request left and no answer came back (read timeout, dropped connection): the server may have
  answered and billed it, so it is asked again once at most, and the item is marked ``reasked``
  (counted in the stage's report). A second such loss fails the item, and it is not sent again in
  this process (not even by the runner's second pass); the next run asks it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from typing import Any

from fashionblip2.annotation.backends import OnResult, Request
from fashionblip2.common.images import load_rgb
from fashionblip2.common.issues import BadInputError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
RETRY_STATUSES = (408, 409, 429)
NEVER_SENT = ("ConnectError", "ConnectTimeout")  # the transport's names for a request that never left


@dataclass
class APISettings:
    """How to reach the server; every value comes from the stage's config section."""

    base_url: str | None
    model: str
    api_key_env: str
    concurrency: int
    max_retries: int
    timeout_s: float
    max_tokens: int
    temperature: float

    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url and any(h in self.base_url for h in LOCAL_HOSTS):
            return "local-server-needs-no-key"
        raise BadInputError(f"the API key is read from the environment variable {self.api_key_env}, which is not set")


def image_data_url(path: str) -> str:
    buf = io.BytesIO()
    load_rgb(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def backoff_s(attempt: int, retry_after: str | None) -> float:
    """The server's Retry-After when it gives a sane one, else 0.5 s doubling up to 8 s, with jitter."""
    try:
        if retry_after is not None and 0 <= float(retry_after) <= 60:
            return float(retry_after)
    except ValueError:
        pass
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not security


class AnswerLost(Exception):
    """A question whose requests got no answer back twice: asking again could pay a third time."""


def short_error(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


class OpenAIChat:
    """Chat completions; ``reasked`` holds the indices (of the last ``generate`` call) asked again
    after an answer may have been lost on the way back."""

    name = "openai"

    def __init__(self, settings: APISettings, *, with_image: bool):
        self.settings = settings
        self.model = settings.model
        self.with_image = with_image
        self.reasked: set[int] = set()
        self.lost: dict[str, int] = {}  # question -> requests sent for it whose answer never came back

    def messages(self, r: Request) -> list[dict[str, Any]]:
        messages = [dict(m) for m in r.keyed["messages"]]
        if self.with_image:  # the image goes with the last user message
            last = messages[-1]
            last["content"] = [
                {"type": "text", "text": last["content"]},
                {"type": "image_url", "image_url": {"url": image_data_url(r.extra["path"])}},
            ]
        return messages

    def body(self, r: Request) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": self.messages(r),
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
        }

    def client(self):
        import openai

        return openai.AsyncOpenAI(
            base_url=self.settings.base_url,
            api_key=self.settings.api_key(),
            max_retries=0,  # retried here, where a lost answer is told from a refusal
            timeout=self.settings.timeout_s,
        )

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        self.reasked = set()
        if requests:
            asyncio.run(self._generate(requests, on_result))

    async def _ask(self, client: Any, i: int, question: str, body: dict[str, Any]) -> str:
        """One question, retried by what each failure costs; raises the last error."""
        import openai

        refused = 0
        while True:
            if self.lost.get(question, 0) >= 2:
                raise AnswerLost(
                    "two requests for it got no answer back (each may have been billed); not sent again in this "
                    "run, the next run asks it"
                )
            try:
                # The low-level post skips the typed request transform and reply models (milliseconds a call).
                return await client.post("/chat/completions", body=body, cast_to=str)
            except openai.APIStatusError as e:
                if (
                    not (e.status_code in RETRY_STATUSES or e.status_code >= 500)
                    or refused >= self.settings.max_retries
                ):
                    raise
                await asyncio.sleep(backoff_s(refused, e.response.headers.get("retry-after")))
                refused += 1
            except openai.APIConnectionError as e:  # includes timeouts
                if type(e.__cause__).__name__ in NEVER_SENT:
                    if refused >= self.settings.max_retries:
                        raise
                    await asyncio.sleep(backoff_s(refused, None))
                    refused += 1
                    continue
                self.lost[question] = self.lost.get(question, 0) + 1
                if self.lost[question] >= 2:
                    raise
                self.reasked.add(i)

    async def _generate(self, requests: list[Request], on_result: OnResult) -> None:
        limit = asyncio.Semaphore(self.settings.concurrency)
        async with self.client() as client:

            async def one(i: int, r: Request) -> None:
                async with limit:
                    text, error = None, None
                    try:
                        question = hashlib.sha256(json.dumps(r.keyed, sort_keys=True).encode()).hexdigest()
                        raw = await self._ask(client, i, question, self.body(r))
                        choices = json.loads(raw).get("choices") or [{}]
                        text = choices[0].get("message", {}).get("content")
                        error = None if text else "empty content"
                    except Exception as e:  # noqa: BLE001 - an API error or a malformed reply fails this item only
                        error = f"{type(e).__name__}: {short_error(e)}"
                # Outside the try: storing a paid answer must never fail as an item (it would be asked again).
                on_result(i, text, error)

            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
