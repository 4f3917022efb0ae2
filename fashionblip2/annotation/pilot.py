"""A paid-run pilot: annotate a seeded sample of pairs with the configured backends, and hold its
statistics against the paper's Table 1 FACap rows before paying for the full run.

The pilot asks exactly the questions the full run will ask for those pairs (same prompts, same
settings, same result cache), so the full run pays only for the rest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fashionblip2.annotation.backends import Request
from fashionblip2.annotation.pricing import Prices, cost_usd, is_paid, request_tokens, text_tokens
from fashionblip2.annotation.runner import CAPTION_FAILED
from fashionblip2.datasets.table1 import TABLE1_REPORTED, text_stats

PASS, WARN = "pass", "warn"
# The paper's FACap rows of Table 1: vocabulary and average length (words) of the texts.
PAPER = {name: (vocab, length) for name, *_, vocab, length in TABLE1_REPORTED if name.startswith("FACap")}
PAPER_CAPTIONS, PAPER_MODIFICATIONS = PAPER["FACap (captions)"], PAPER["FACap (mod. texts)"]


def sample_pairs(pairs: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` pairs drawn with ``seed`` (all of them when there are fewer), sorted by ids: the same
    config gives the same pilot."""
    chosen = pairs.sample(n=min(n, len(pairs)), random_state=seed) if n < len(pairs) else pairs
    return chosen.sort_values(["reference_id", "target_id"]).reset_index(drop=True)


def answer_tokens(
    requests: list[Request], answers: list[str | None], prices: Prices, with_image: bool
) -> tuple[int, int]:
    """Input and output tokens of these answers, counted as the pre-run estimate counts them
    (:mod:`~fashionblip2.annotation.pricing`), the outputs from the answers themselves."""
    input_tokens = sum(request_tokens(r.keyed["messages"], prices, with_image=with_image) for r in requests)
    # A failed answer is None, or NaN once it has been through a Parquet file.
    return input_tokens, sum(text_tokens(a) for a in answers if isinstance(a, str))


@dataclass
class StageSummary:
    """One stage of the pilot: its rows, the requests behind them, and the full run's size."""

    name: str  # "caption" or "modification"
    frame: pd.DataFrame  # a row per item: text, status, reason, cached
    requests: list[Request]
    full_items: int  # what the full run asks for this stage (images to caption, pairs)
    backend: str  # annotation.<stage>.backend: whether and at what share of the list price it is paid
    max_failed_fraction: float

    @property
    def texts(self) -> list[str]:
        return self.frame.loc[self.frame["status"] == "ok", "text"].tolist()

    @property
    def paid(self) -> bool:
        return is_paid(self.backend)

    def tokens(self, prices: Prices) -> tuple[int, int]:
        """Input and output tokens of the pilot's requests (the asked rows come first, skipped ones after)."""
        asked = self.frame.iloc[: len(self.requests)]
        return answer_tokens(self.requests, asked["text"].tolist(), prices, with_image=self.name == "caption")

    def cost(self, prices: Prices) -> float:
        return cost_usd(*self.tokens(prices), prices, self.backend)


def _length_line(what: str, texts: list[str], paper: float, tolerance: float) -> dict[str, Any]:
    _, length = text_stats(texts)
    ok = bool(texts) and abs(length - paper) <= tolerance * paper
    return {
        "Check": f"average {what} length (words)",
        "Pilot": round(length, 2),
        "Paper (Table 1, FACap)": paper,
        "Rule": f"within ±{tolerance:.0%} of the paper",
        "Verdict": PASS if ok else WARN,
    }


def _vocab_line(what: str, texts: list[str], paper: int) -> dict[str, Any]:
    vocab, _ = text_stats(texts)
    # A vocabulary grows with the number of texts: a pilot's can only be compared from above. More
    # distinct words in a pilot than in the paper's whole dataset means noisy or run-on answers.
    return {
        "Check": f"{what} vocabulary ({len(texts):,} texts)",
        "Pilot": vocab,
        "Paper (Table 1, FACap)": paper,
        "Rule": "at most the paper's (the full dataset's) vocabulary",
        "Verdict": PASS if 0 < vocab <= paper else WARN,
    }


def _failure_line(stage: StageSummary) -> dict[str, Any]:
    # As the full run's limit counts them (runner.check_failures): a pair not asked because one of
    # its captions failed is the caption stage's failure, not this stage's.
    asked = stage.frame[stage.frame["reason"] != CAPTION_FAILED]
    n, failed_rows = len(asked), asked[asked["status"] != "ok"]
    failed = len(failed_rows)
    reasons = Counter(failed_rows["reason"])
    by_reason = "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common()) or "none"
    return {
        "Check": f"{stage.name} failures ({by_reason})",
        "Pilot": f"{failed} of {n} ({failed / max(1, n):.1%})",
        "Paper (Table 1, FACap)": "–",
        "Rule": f"at most annotation.{stage.name}.max_failed_fraction ({stage.max_failed_fraction:.0%})",
        "Verdict": PASS if failed <= stage.max_failed_fraction * n else WARN,
    }


def pilot_table(
    captions: StageSummary,
    modifications: StageSummary,
    prices: Prices,
    length_tolerance: float,
    budget_usd: float,
) -> pd.DataFrame:
    """One line per check, each with its rule and a pass/warn verdict; then what the pilot cost and
    what the full run would cost on top (the pilot's answers are cached: not paid again)."""
    rows = [
        _length_line("caption", captions.texts, PAPER_CAPTIONS[1], length_tolerance),
        _vocab_line("caption", captions.texts, PAPER_CAPTIONS[0]),
        _length_line("modification text", modifications.texts, PAPER_MODIFICATIONS[1], length_tolerance),
        _vocab_line("modification text", modifications.texts, PAPER_MODIFICATIONS[0]),
        _failure_line(captions),
        _failure_line(modifications),
    ]
    spent = captions.cost(prices) + modifications.cost(prices)
    projected = 0.0
    for stage in (captions, modifications):
        per_item = stage.cost(prices) / max(1, len(stage.requests))
        projected += per_item * max(0, stage.full_items - len(stage.frame))
    paid = captions.paid or modifications.paid
    rows.append(
        {
            "Check": "cost of the pilot's answers (estimated, USD)",
            "Pilot": round(spent, 4),
            "Paper (Table 1, FACap)": "–",
            "Rule": "offline backends: free" if not paid else "information",
            "Verdict": PASS,
        }
    )
    rows.append(
        {
            "Check": (
                f"projected cost of the rest of the full run (USD; {captions.full_items:,} images, "
                f"{modifications.full_items:,} pairs, minus the pilot's)"
            ),
            "Pilot": round(projected, 4),
            "Paper (Table 1, FACap)": "–",
            "Rule": f"within pilot.budget_usd ({budget_usd:,.2f})"
            if budget_usd > 0
            else "no budget (pilot.budget_usd)",
            "Verdict": PASS if budget_usd <= 0 or projected <= budget_usd else WARN,
        }
    )
    return pd.DataFrame(rows)
