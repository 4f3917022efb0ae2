"""Run a backend over many requests with the cache, validation, one retry, and a failure list."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from fashionblip2.annotation.backends import Request
from fashionblip2.annotation.cache import ResultCache, request_key
from fashionblip2.annotation.pricing import Prices, cost_usd, request_tokens
from fashionblip2.common.issues import StopRun

log = logging.getLogger(__name__)
Check = Callable[["str | None"], "str | None"]


@dataclass
class Outcome:
    key: str
    text: str | None
    status: str  # "ok" or "failed"
    reason: str
    cached: bool
    # Asked again after an answer may have been lost on the way back (a timeout): maybe paid twice.
    reasked: bool = False


def annotate(
    requests: list[Request],
    backend: Any,
    cache: ResultCache,
    check: Check,
    *,
    desc: str = "annotating",
    progress: bool = True,
    second_chance: Callable[[], bool] = lambda: True,
) -> list[Outcome]:
    """An outcome per request. Cached answers are reused without a call; identical questions are
    asked once; new answers are checked, a rejected one is asked once more (when ``second_chance()``
    allows it), and only accepted answers are stored in the cache, before anything else happens.

    A cache that cannot be written raises :class:`~fashionblip2.annotation.cache.CacheWriteError`:
    checked before the first question, and again at each answer."""
    keys = [request_key(backend.name, backend.model, r.keyed) for r in requests]
    outcomes: list[Outcome | None] = [None] * len(requests)
    same: dict[str, list[int]] = {}  # key -> every request asking that question, the first one is asked
    for i, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            outcomes[i] = Outcome(key, hit["text"], "ok", "", True)
        else:
            same.setdefault(key, []).append(i)
    pending = [indices[0] for indices in same.values()]
    waiting = sum(len(v) for v in same.values())
    log.info(
        "%s: %d requests, %d answered from the cache, %d to ask (%d distinct questions)",
        desc,
        len(requests),
        len(requests) - waiting,
        waiting,
        len(pending),
    )
    if pending:
        cache.check_writable()
    bar = tqdm(total=len(pending), desc=desc, unit="req", disable=not progress or not pending)

    reasked: set[int] = set()

    def settle(i: int, text: str | None, status: str, reason: str) -> None:
        for j in same[keys[i]]:  # the same question asked once: every request asking it shares the answer
            outcomes[j] = Outcome(keys[i], text, status, reason, False)
        bar.update(1)

    def ask(indices: list[int], last_try: bool) -> dict[int, tuple[str | None, str]]:
        rejected: dict[int, tuple[str | None, str]] = {}

        def on_result(j: int, text: str | None, error: str | None) -> None:
            i = indices[j]
            reason = error or check(text)
            if reason is None:
                cache.put(keys[i], {"text": text, "backend": backend.name, "model": backend.model})
                settle(i, text, "ok", "")
            elif last_try:
                settle(i, text, "failed", reason)
            else:
                rejected[i] = (text, reason)

        backend.generate([requests[i] for i in indices], on_result)
        reasked.update(indices[j] for j in getattr(backend, "reasked", ()))
        return rejected

    retry = ask(pending, last_try=False)
    if retry and second_chance():
        log.info("%s: %d answer(s) rejected or failed, asking once more", desc, len(retry))
        ask(list(retry), last_try=True)
    elif retry:
        log.warning("%s: %d answer(s) rejected or failed; no time left to ask again here", desc, len(retry))
        for i, (text, reason) in retry.items():
            settle(i, text, "failed", reason)
    bar.close()
    for i, o in enumerate(outcomes):  # a backend that skipped an item must not make it vanish
        if o is None:
            outcomes[i] = Outcome(keys[i], None, "failed", "no answer from the backend", False)
    for i in reasked:
        for j in same[keys[i]]:
            outcomes[j].reasked = True  # type: ignore[union-attr]
    return outcomes  # type: ignore[return-value]


# A pair whose caption failed is not asked for its modification text: counted by the caption stage.
CAPTION_FAILED = "a caption of the pair failed"


class TooManyFailures(StopRun):
    """More answers failed than the stage allows (annotation.<stage>.max_failed_fraction)."""


def check_failures(
    statuses: list[str], reasons: list[str], max_fraction: float, *, stage: str, failures_path: str | None = None
) -> dict[str, Any]:
    """Counts of a shard's failures by reason; :class:`TooManyFailures` when their share of the
    questions asked is above ``max_fraction`` (an outage must stop the run, not make an empty dataset)."""
    asked = [(s, r) for s, r in zip(statuses, reasons, strict=True) if r != CAPTION_FAILED]
    failed = [r for s, r in asked if s != "ok"]
    by_reason: dict[str, int] = {}
    for r in failed:
        by_reason[r] = by_reason.get(r, 0) + 1
    fraction = len(failed) / len(asked) if asked else 0.0
    summary = {"asked": len(asked), "failed": len(failed), "fraction": fraction, "by_reason": by_reason}
    if fraction > max_fraction:
        where = f"; the failed items: {failures_path}" if failures_path else ""
        raise TooManyFailures(
            f"{stage}: {len(failed)} of {len(asked)} answers failed ({fraction:.1%}, more than "
            f"annotation.{stage}.max_failed_fraction {max_fraction:.1%}); by reason: "
            + "; ".join(f"{n} x {r}" for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1]))
            + f"{where}. Fix the cause and rerun: answers already stored are not asked (nor paid for) again"
        )
    return summary


def estimate_cost(
    requests: list[Request], cache: ResultCache, backend: Any, max_tokens: int, prices: Prices, *, with_image: bool
) -> dict[str, float]:
    """What a paid run will ask: requests not in the cache, their tokens and the most they cost, by the
    one price rule (:mod:`~fashionblip2.annotation.pricing`: the Batch API at half the list price)."""
    todo = [r for r in requests if request_key(backend.name, backend.model, r.keyed) not in cache]
    input_tokens = sum(request_tokens(r.keyed["messages"], prices, with_image=with_image) for r in todo)
    output_tokens = len(todo) * max_tokens
    return {
        "requests": len(todo),
        "input_tokens": input_tokens,
        "output_tokens_at_most": output_tokens,
        "cost_usd_at_most": round(cost_usd(input_tokens, output_tokens, prices, backend.name), 4),
    }
