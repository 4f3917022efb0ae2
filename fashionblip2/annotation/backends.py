"""Model backends for both annotation stages.

A backend turns requests into texts and reports each result through a callback as soon as it
exists, so the caller can validate and cache it at once (a killed job loses nothing it paid for).

- ``metadata`` captioner and ``rules`` differ: offline, deterministic (the embedded default).
- ``openai``: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, ...), concurrent
  requests under a limit, the client's own retries (exponential backoff, honouring Retry-After),
  timeouts; or the Batch API (JSONL upload, poll, read back).
- ``transformers``: a Hugging Face vision-language model from a local folder, batched generation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashionblip2.annotation.lexicon import find_attributes
from fashionblip2.common.colours import NAMED_COLOURS
from fashionblip2.common.images import load_rgb
from fashionblip2.common.io import write_json_atomic
from fashionblip2.common.issues import BadInputError, StopRun

log = logging.getLogger(__name__)
OnResult = Callable[[int, "str | None", "str | None"], None]  # (index, text, error)


@dataclass
class Request:
    """One question to a model. ``keyed`` is what identifies the answer (the cache key is made of it);
    ``extra`` is what the backend needs besides (an image path, the raw fields)."""

    keyed: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


# --- offline backends -----------------------------------------------------------------------------

_PALETTE = np.array(list(NAMED_COLOURS.values()), dtype=np.float32)
_PALETTE_NAMES = list(NAMED_COLOURS)


def garment_colours(path: str) -> list[str]:
    """Named colours of the garment, most frequent first: pixels unlike the background (the corners)."""
    img = np.asarray(load_rgb(path).resize((48, 48)), dtype=np.float32).reshape(-1, 3)
    grid = img.reshape(48, 48, 3)
    background = np.median(np.stack([grid[0, 0], grid[0, -1], grid[-1, 0], grid[-1, -1]]), axis=0)
    fg = img[np.abs(img - background).sum(axis=1) > 60]
    if len(fg) < 20:
        fg = img
    names = np.argmin(((fg[:, None, :] - _PALETTE[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(names, minlength=len(_PALETTE_NAMES))
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] >= 0.12 * len(fg)]
    return [_PALETTE_NAMES[i] for i in order[:2]]


PATTERN_WORDS = {
    "stripes": "striped",
    "dots": "polka-dot",
    "plaid": "plaid",
    "floral": "floral",
    "colour block": "colour-block",
}
NECKLINE_WORDS = {
    "v-neck": "a V-neck",
    "round": "a round neckline",
    "square": "a square neckline",
    "turtleneck": "a turtleneck",
    "collar": "a collar",
    "lapel": "lapels",
}
LENGTH_WORDS = {
    "mini": "mini",
    "knee": "knee-length",
    "midi": "midi",
    "maxi": "maxi",
    "cropped": "cropped",
    "full": "full-length",
    "shorts": "shorts-length",
    "long": "long",
    "regular": "regular length",
}
SLEEVE_WORDS = {"short": "short", "elbow": "elbow-length", "long": "long"}
FABRIC_ADJECTIVES = {"knitted", "furry"}


def _fabric(fabric: str) -> str:
    return f"is {fabric}" if fabric in FABRIC_ADJECTIVES else f"is made of {fabric}"


def _describe(category: str, a: dict[str, str], colours: list[str]) -> str:
    garment = a.get("garment", category)
    colour = colours[0] if colours else a.get("colour", "")
    pattern = a.get("pattern", "solid")
    words = [a.get("fit", "") if a.get("fit") != "regular" else "", colour, garment]
    text = f"A {' '.join(w for w in words if w)}"
    if pattern != "solid":
        second = colours[1] if len(colours) > 1 else ""
        text += f" with a {PATTERN_WORDS[pattern]} pattern" + (f" in {second}" if second else "")
    else:
        text += " in a solid colour"
    text += "."
    details = []
    if a.get("sleeve"):
        details.append("no sleeves" if a["sleeve"] == "sleeveless" else f"{SLEEVE_WORDS[a['sleeve']]} sleeves")
    if a.get("neckline"):
        details.append(NECKLINE_WORDS[a["neckline"]])
    if details:
        text += f" It has {' and '.join(details)}."
    if a.get("length"):
        text += f" It is {LENGTH_WORDS[a['length']]}."
    if a.get("fabric"):
        text += f" It {_fabric(a['fabric'])}."
    return text


class MetadataCaptioner:
    """Offline captioner: what a VLM would be given (category, product text, attributes), read with the
    fashion lexicon, plus the garment's colours read from the pixels. Never sees the ground truth."""

    name = "metadata"
    model = "lexicon-v3"  # bump when the code changes: cached answers are keyed by it

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        for i, r in enumerate(requests):
            text, error = None, None
            try:
                attrs = find_attributes(
                    " ".join([r.extra.get("product_text", ""), " ".join(r.extra.get("attributes", {}).values())])
                )
                text = _describe(r.extra["category"], attrs, garment_colours(r.extra["path"]))
            except Exception as e:  # noqa: BLE001 - one bad image must not stop the shard
                error = f"{type(e).__name__}: {e}"
            on_result(i, text, error)  # outside the try: a cache write error must stop the run


_ORDERS = {
    "length": ["mini", "shorts", "cropped", "knee", "midi", "full", "maxi", "long"],
    "sleeve": ["sleeveless", "short", "elbow", "long"],
}


def _phrase(attr: str, ref: str | None, tgt: str) -> str:
    if attr == "colour":
        return f"is {tgt}" + (f" instead of {ref}" if ref else "")
    if attr == "pattern":
        return "has no pattern" if tgt == "solid" else f"has a {PATTERN_WORDS[tgt]} pattern"
    if attr == "sleeve":
        if tgt == "sleeveless":
            return "is sleeveless"
        return f"has {SLEEVE_WORDS[tgt]} sleeves" + (
            f" instead of {SLEEVE_WORDS[ref]} ones" if ref in SLEEVE_WORDS else ""
        )
    if attr == "length":
        order = _ORDERS["length"]
        if ref in order and tgt in order:
            return f"is {'longer' if order.index(tgt) > order.index(ref) else 'shorter'}, {LENGTH_WORDS[tgt]}"
        return f"is {LENGTH_WORDS[tgt]}"
    if attr == "neckline":
        return f"has {NECKLINE_WORDS[tgt]}"
    if attr == "fit":
        return {"slim": "is more fitted", "loose": "is looser"}.get(tgt, f"has a {tgt} fit")
    if attr == "fabric":
        return _fabric(tgt)
    return f"is {tgt}"


class RulesDiffer:
    """Offline differ: compares the two captions attribute by attribute and names the differences."""

    name = "rules"
    model = "lexicon-v3"  # bump when the code changes: cached answers are keyed by it
    ORDER = ("colour", "pattern", "length", "sleeve", "neckline", "fit", "fabric")

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        for i, r in enumerate(requests):
            ref, tgt = find_attributes(r.extra["reference_caption"]), find_attributes(r.extra["target_caption"])
            phrases = [_phrase(a, ref.get(a), tgt[a]) for a in self.ORDER if a in tgt and tgt[a] != ref.get(a)]
            if not phrases:
                on_result(i, None, "no attribute difference between the two captions")
                continue
            garment = tgt.get("garment", r.extra.get("category", "garment"))
            body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
            on_result(i, f"The {garment} {body}.", None)


# --- OpenAI-compatible API --------------------------------------------------------------------------


@dataclass
class APISettings:
    base_url: str | None
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32
    max_retries: int = 6
    timeout_s: float = 60.0
    max_tokens: int = 128
    temperature: float = 0.2

    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url and any(h in self.base_url for h in ("localhost", "127.0.0.1", "[::1]")):
            return "local-server-needs-no-key"
        raise BadInputError(f"the API key is read from the environment variable {self.api_key_env}, which is not set")


def image_data_url(path: str) -> str:
    buf = io.BytesIO()
    load_rgb(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class OpenAIChat:
    """Chat completions against any OpenAI-compatible server, many requests in flight at once."""

    name = "openai"

    def __init__(self, settings: APISettings, *, with_image: bool):
        self.settings = settings
        self.model = settings.model
        self.with_image = with_image

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
            max_retries=self.settings.max_retries,
            timeout=self.settings.timeout_s,
        )

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        if requests:
            asyncio.run(self._generate(requests, on_result))

    async def _generate(self, requests: list[Request], on_result: OnResult) -> None:
        limit = asyncio.Semaphore(self.settings.concurrency)
        async with self.client() as client:

            async def one(i: int, r: Request) -> None:
                async with limit:
                    text, error = None, None
                    try:
                        # The client's low-level post keeps its retries (backoff, Retry-After) but skips
                        # the typed request transform and reply models, which cost milliseconds a call.
                        raw = await client.post("/chat/completions", body=self.body(r), cast_to=str)
                        choices = json.loads(raw).get("choices") or [{}]
                        text = choices[0].get("message", {}).get("content")
                        error = None if text else "empty content"
                    except Exception as e:  # noqa: BLE001 - an API error or a malformed reply fails this item only
                        error = f"{type(e).__name__}: {_short(e)}"
                # Outside the try: storing a paid answer must never fail as an item (it would be asked again).
                on_result(i, text, error)

            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


class OpenAIBatch(OpenAIChat):
    """The same requests through the Batch API (half the price, answers within 24 h).

    Every batch is written down before it is waited for: its input file id, batch id and the ids of
    its requests go atomically to a state file beside the shard (``state_path``). A job killed while
    polling (preemption, the time limit, a SLURM retry) resumes the same batch on its next run and
    submits nothing again; a batch that expired or failed is resubmitted only for the requests that
    have no answer yet. Results are handed to ``on_result`` (which caches them) as soon as a batch's
    files are read. Requests beyond one batch's limits are split over several batches.
    """

    name = "openai-batch"
    ENDED = ("completed", "failed", "expired", "cancelled")

    def __init__(
        self,
        settings: APISettings,
        *,
        with_image: bool,
        poll_s: float = 30.0,
        max_wait_s: float = 86400,
        state_path: str | os.PathLike[str] | None = None,
        max_requests: int = 50_000,
        max_bytes: int = 200_000_000,
    ):
        super().__init__(settings, with_image=with_image)
        self.poll_s = poll_s
        self.max_wait_s = max_wait_s
        self.state_path = Path(state_path) if state_path else None
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.started = time.monotonic()
        self.first_pass_s: float | None = None

    # -- the state file --------------------------------------------------------------------------

    def _load_state(self) -> list[dict[str, Any]]:
        if self.state_path is None or not self.state_path.exists():
            return []
        return json.loads(self.state_path.read_text(encoding="utf-8"))["batches"]

    def _save_state(self, batches: list[dict[str, Any]]) -> None:
        if self.state_path is not None:
            write_json_atomic(self.state_path, {"batches": batches})

    def time_for_another_pass(self) -> bool:
        """Whether a second batch (for rejected answers) can end before this job's time runs out,
        judged by how long the first one took; if not, the next run asks them."""
        if self.first_pass_s is None:
            return True
        return time.monotonic() - self.started + self.first_pass_s < self.max_wait_s

    # -- one pass ------------------------------------------------------------------------------------

    def _client(self):
        import openai

        return openai.OpenAI(
            base_url=self.settings.base_url,
            api_key=self.settings.api_key(),
            max_retries=self.settings.max_retries,
            timeout=self.settings.timeout_s,
        )

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        if not requests:
            return
        pass_started = time.monotonic()
        client = self._client()
        ids = [custom_id(self.body(r)) for r in requests]
        index: dict[str, list[int]] = {}  # a batch may hold a question once: its answer goes to every asker
        for i, cid in enumerate(ids):
            index.setdefault(cid, []).append(i)
        answered: set[str] = set()
        batches = self._load_state()

        def read(batch_entry: dict[str, Any], batch: Any) -> None:
            """Hand over every result of an ended batch that a current request asks for."""
            for file_id in (batch.output_file_id, batch.error_file_id):
                if not file_id:
                    continue
                for line in client.files.content(file_id).text.splitlines():
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    cid = row["custom_id"]
                    if cid not in index or cid in answered:
                        continue
                    answered.add(cid)
                    text, error = _batch_result(row)
                    for i in index[cid]:
                        on_result(i, text, error)
            batch_entry["status"] = batch.status
            batch_entry["read"] = True
            self._save_state(batches)

        live = [b for b in batches if not b.get("read") and set(b["custom_ids"]) & set(index)]
        for entry in live:
            log.info("resuming batch %s (%d requests)", entry["batch_id"], len(entry["custom_ids"]))
        waiting_on = {cid for b in live for cid in b["custom_ids"]}
        todo = [asking[0] for cid, asking in index.items() if cid not in waiting_on]
        # An expired or failed batch leaves requests without an answer: those, and only those, go again.
        for chunk in self._chunks(requests, ids, todo):
            entry = self._submit(client, chunk, requests, ids)
            batches.append(entry)
            self._save_state(batches)
            live.append(entry)
        deadline = self.started + self.max_wait_s
        while live:
            for entry in list(live):
                batch = client.batches.retrieve(entry["batch_id"])
                if batch.status in self.ENDED:
                    log.info("batch %s: %s", batch.id, batch.status)
                    read(entry, batch)
                    live.remove(entry)
            if live:
                if time.monotonic() > deadline:
                    pending = ", ".join(e["batch_id"] for e in live)
                    raise BatchPending(
                        f"batch(es) {pending} not ended after {self.max_wait_s:.0f} s (annotation max_wait_s); "
                        f"they are recorded in {self.state_path}: rerun to resume them, nothing is submitted again"
                    )
                time.sleep(self.poll_s)
        for cid, asking in index.items():
            if cid not in answered:
                ended = {b["status"] for b in batches if cid in b["custom_ids"]}
                for i in asking:
                    on_result(i, None, f"batch {'/'.join(sorted(ended)) or 'ended'}: no result")
        if self.first_pass_s is None:
            self.first_pass_s = time.monotonic() - pass_started

    def _chunks(self, requests: list[Request], ids: list[str], todo: list[int]):
        """The JSONL lines of ``todo``, cut so that no batch exceeds the request or size limit."""
        chunk: list[tuple[int, str]] = []
        size = 0
        for i in todo:
            line = json.dumps(
                {"custom_id": ids[i], "method": "POST", "url": "/v1/chat/completions", "body": self.body(requests[i])}
            )
            if chunk and (len(chunk) >= self.max_requests or size + len(line) + 1 > self.max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append((i, line))
            size += len(line) + 1
        if chunk:
            yield chunk

    def _submit(self, client: Any, chunk: list[tuple[int, str]], requests: list[Request], ids: list[str]):
        data = ("\n".join(line for _, line in chunk) + "\n").encode()
        uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        log.info("batch %s submitted: %d requests, %.1f MB", batch.id, len(chunk), len(data) / 1e6)
        return {
            "batch_id": batch.id,
            "input_file_id": uploaded.id,
            "custom_ids": [ids[i] for i, _ in chunk],
            "status": batch.status,
            "read": False,
        }


class BatchPending(StopRun):
    """Batches still running when the job must end; the next run resumes them."""


def custom_id(body: dict[str, Any]) -> str:
    """A request's id in a batch: a hash of what is asked, so a resumed batch's results find their
    requests whatever their order."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def _batch_result(row: dict[str, Any]) -> tuple[str | None, str | None]:
    response = row.get("response") or {}
    if response.get("status_code") == 200:
        choices = response.get("body", {}).get("choices") or [{}]
        text = choices[0].get("message", {}).get("content")
        return text, None if text else "empty content"
    error = row.get("error") or response.get("body", {}).get("error") or {}
    return None, f"batch error: {error.get('message', response.get('status_code'))}"


# --- Hugging Face transformers VLM -----------------------------------------------------------------


# The transformers-format (``-hf``) InternVL release of about the paper's size; InternVL2.5 itself was
# published with custom code only.
HF_FORMAT_RELEASE = "OpenGVLab/InternVL3-8B-hf"


def custom_code_reason(path: str | os.PathLike[str]) -> str | None:
    """Why the model folder at ``path`` is a custom-code checkpoint (one written for
    ``trust_remote_code``), or None if its config.json names a model transformers implements itself.

    A folder without config.json is left to transformers, whose own error names the missing file.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type and model_type not in CONFIG_MAPPING:
        return f"its config.json has model_type {model_type!r}, which transformers does not implement"
    if config.get("auto_map"):
        # Even where the model_type is known, the weights were laid out for the repository's own code.
        return (
            f"its config.json has auto_map (classes from the repository's own code: {', '.join(config['auto_map'])}); "
            "if the folder is in transformers format after all, remove auto_map from it"
        )
    return None


class TransformersCaptioner:
    """A vision-language model in Hugging Face format from a local folder, batched greedy generation."""

    name = "transformers"

    def __init__(self, path: str, *, max_new_tokens: int = 128, batch_size: int = 8, device: str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not os.path.isdir(path):
            raise BadInputError(
                f"annotation.caption.model_path {path!r} is not a folder: point it at a downloaded model"
            )
        # Checked before any weights load: custom code is never run here (trust_remote_code stays off), and
        # transformers' own refusal of such a folder does not say which checkpoint to get instead.
        reason = custom_code_reason(path)
        if reason:
            raise BadInputError(
                f"annotation.caption.model_path {path!r} is a custom-code checkpoint: {reason}. It needs "
                "trust_remote_code, which this workflow does not use. Download the transformers-format release "
                f"instead, e.g. {HF_FORMAT_RELEASE} for InternVL (its config.json has model_type 'internvl')"
            )
        self.model = os.path.basename(os.path.normpath(path))
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.net = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype).to(self.device)
        self.net.eval()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def generate(self, requests: list[Request], on_result: OnResult) -> None:
        import torch

        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            prompts = [
                self.processor.apply_chat_template(
                    [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image"},
                                {"type": "text", "text": r.keyed["messages"][-1]["content"]},
                            ],
                        }
                    ],
                    add_generation_prompt=True,
                )
                for r in chunk
            ]
            images = [load_rgb(r.extra["path"]) for r in chunk]
            inputs = self.processor(
                text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt"
            ).to(self.device)
            with torch.no_grad():
                out = self.net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for k, text in enumerate(texts):
                on_result(start + k, text.strip(), None)
