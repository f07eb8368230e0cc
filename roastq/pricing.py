"""One price table: dollars per million tokens, per model, by token kind.

RoastMyPost once stored task prices 100x too low; here a price is computed once, from the
response's ``usage``, with Decimal arithmetic, and written with the result. An unknown model is
priced at the dearest known rate and a warning is logged: never silently at zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

logger = logging.getLogger("roastq.pricing")

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    input: Decimal
    output: Decimal
    cache_write: Decimal  # 5-minute ephemeral cache write: 1.25x input
    cache_read: Decimal  # cache hit: 0.1x input


def _p(inp: str, out: str) -> Price:
    i = Decimal(inp)
    return Price(i, Decimal(out), i * Decimal("1.25"), i * Decimal("0.1"))


OPUS, SONNET, HAIKU = _p("5", "25"), _p("3", "15"), _p("1", "5")

PRICES: dict[str, Price] = {
    "claude-opus-5-5": OPUS,
    "claude-opus-5": OPUS,
    "claude-opus-4-8": OPUS,
    "claude-opus-4-7": OPUS,
    "claude-opus-4-6": OPUS,
    "claude-opus-4-5": OPUS,
    "claude-opus-4-5-20251101": OPUS,
    "claude-sonnet-5-5": SONNET,
    "claude-sonnet-5": SONNET,
    "claude-sonnet-4-6": SONNET,
    "claude-sonnet-4-5": SONNET,
    "claude-sonnet-4-5-20250929": SONNET,
    "claude-haiku-5-5": HAIKU,
    "claude-haiku-4-5": HAIKU,
    "claude-haiku-4-5-20251001": HAIKU,
}

#: What an unknown model is charged: the dearest known rate, so budgets err on the safe side.
UNKNOWN_MODEL_PRICE = max(PRICES.values(), key=lambda p: p.output)


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


def price_for(model: str) -> Price:
    price = PRICES.get(model)
    if price is None:
        logger.warning(
            "no price for model %r: charging the dearest known rate (%s/%s per MTok)",
            model, UNKNOWN_MODEL_PRICE.input, UNKNOWN_MODEL_PRICE.output,
        )
        return UNKNOWN_MODEL_PRICE
    return price


def cost_usd(model: str, usage: Usage) -> Decimal:
    """Dollars for one call, exact to the micro-dollar."""
    p = price_for(model)
    total = (
        usage.input_tokens * p.input
        + usage.output_tokens * p.output
        + usage.cache_write_tokens * p.cache_write
        + usage.cache_read_tokens * p.cache_read
    ) / MILLION
    return total.quantize(Decimal("0.000001"))
