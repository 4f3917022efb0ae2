"""What an annotation answer costs: one predicate for "this backend is paid for" and one price rule,
used by annotate's pre-run estimate, the pilot and the plan (``snakemake plan``), so that the three
can never disagree about the Batch discount or how a token is counted.

Standard library only: the Snakefile's helpers import it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Backends that call a paid API: their answers cost money, their jobs need the internet.
PAID_BACKENDS = ("openai", "openai-batch")
# OpenAI's Batch API bills half the list price; annotation.prices holds list prices.
PRICE_FACTOR = {"openai": 1.0, "openai-batch": 0.5}
# The estimate's token: about 4 characters of JSON text (OpenAI's rule of thumb for English). The
# provider's bill is the reference; this only has to be the same everywhere.
CHARS_PER_TOKEN = 4


def is_paid(backend: str) -> bool:
    """Whether ``backend`` (annotation.<stage>.backend) is a paid API."""
    return backend in PAID_BACKENDS


def price_factor(backend: str) -> float:
    """The share of the list price a backend pays: 0 offline, 1 synchronous, 0.5 through the Batch API."""
    return PRICE_FACTOR.get(backend, 0.0)


@dataclass(frozen=True)
class Prices:
    """annotation.prices: USD per million list-price tokens, and the tokens counted per image."""

    input_per_million: float
    output_per_million: float
    image_tokens: int

    @classmethod
    def from_config(cls, prices: dict[str, Any]) -> Prices:
        missing = sorted({"input_per_million", "output_per_million", "image_tokens"} - set(prices))
        if missing:
            raise ValueError(f"annotation.prices lacks {', '.join(missing)}")
        return cls(prices["input_per_million"], prices["output_per_million"], prices["image_tokens"])


def text_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN


def request_tokens(messages: Sequence[dict[str, Any]], prices: Prices, *, with_image: bool) -> int:
    """Input tokens of one request: its chat messages as sent (JSON), and the image if it has one."""
    return text_tokens(json.dumps(list(messages))) + (prices.image_tokens if with_image else 0)


def cost_usd(input_tokens: float, output_tokens: float, prices: Prices, backend: str) -> float:
    """The one price rule: list prices per million tokens, times the backend's share of them."""
    list_price = input_tokens / 1e6 * prices.input_per_million + output_tokens / 1e6 * prices.output_per_million
    return list_price * price_factor(backend)
