"""One price table: dollars per million tokens, per model, by token kind.

RoastMyPost once stored task prices 100x too low; here a price is computed once, from the
response's ``usage``, with Decimal arithmetic, and written with the result. Token kinds, as the
API's ``usage`` reports them: ``input_tokens`` (uncached input), ``output_tokens``,
``cache_creation_input_tokens`` (a 5-minute prompt-cache write: 1.25x input) and
``cache_read_input_tokens`` (a prompt-cache hit: 0.1x input).

A model missing from the table is never priced silently: it is charged the dearest known rate (so
a budget errs on the safe side), a warning is logged once per process and model, and an
``llm_unknown_model`` event is emitted. ``LLM_EXTRA_PRICES`` adds or overrides models without a
release. A dated snapshot id (``claude-sonnet-4-5-20250929``) is priced as its alias when the
table has no entry of its own.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from decimal import Decimal

from roastq import events

logger = logging.getLogger("roastq.llm.pricing")

MILLION = Decimal(1_000_000)
#: Prices are exact to the micro-dollar (the ledger's numeric(14, 6)).
MICRO = Decimal("0.000001")
CACHE_WRITE_FACTOR = Decimal("1.25")  # 5-minute ephemeral cache write
CACHE_READ_FACTOR = Decimal("0.1")
#: The Message Batches API bills every token kind at half the real-time price.
BATCH_FACTOR = Decimal("0.5")


@dataclass(frozen=True)
class Price:
    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    @classmethod
    def of(cls, inp, out) -> Price:
        i = Decimal(str(inp))
        return cls(i, Decimal(str(out)), i * CACHE_WRITE_FACTOR, i * CACHE_READ_FACTOR)


OPUS, SONNET, HAIKU = Price.of("5", "25"), Price.of("3", "15"), Price.of("1", "5")
OPUS_4_1 = Price.of("15", "75")  # Opus 4 and 4.1 kept their older, higher price

PRICES: dict[str, Price] = {
    "claude-opus-5-5": OPUS,
    "claude-opus-5": OPUS,
    "claude-opus-4-8": OPUS,
    "claude-opus-4-7": OPUS,
    "claude-opus-4-6": OPUS,
    "claude-opus-4-5": OPUS,
    "claude-opus-4-1": OPUS_4_1,
    "claude-opus-4-0": OPUS_4_1,
    "claude-opus-4": OPUS_4_1,
    "claude-sonnet-5-5": SONNET,
    "claude-sonnet-5": SONNET,
    "claude-sonnet-4-6": SONNET,
    "claude-sonnet-4-5": SONNET,
    "claude-sonnet-4-0": SONNET,
    "claude-sonnet-4": SONNET,
    "claude-haiku-5-5": HAIKU,
    "claude-haiku-4-5": HAIKU,
}

#: What an unknown model is charged: the dearest known rate, so budgets err on the safe side.
UNKNOWN_MODEL_PRICE = max(PRICES.values(), key=lambda p: (p.output, p.input))

_DATED = re.compile(r"^(?P<alias>.+)-\d{8}$")
_warned: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    @classmethod
    def from_api(cls, usage) -> Usage:
        """From the SDK's ``usage`` object (or its dict form in a cached response)."""
        get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
        return cls(
            input_tokens=get("input_tokens") or 0,
            output_tokens=get("output_tokens") or 0,
            cache_read_tokens=get("cache_read_input_tokens") or 0,
            cache_write_tokens=get("cache_creation_input_tokens") or 0,
        )


def _extra_prices() -> dict[str, Price]:
    from roastq.settings import get_settings

    extra = {}
    for model, p in get_settings().llm_extra_prices.items():
        price = Price.of(p["input"], p["output"])
        # Cache prices may be given explicitly for models whose multipliers differ.
        extra[model] = Price(
            price.input,
            price.output,
            Decimal(str(p.get("cache_write", price.cache_write))),
            Decimal(str(p.get("cache_read", price.cache_read))),
        )
    return extra


def known_price(model: str) -> Price | None:
    """The model's price, from LLM_EXTRA_PRICES, the table or its alias; None if unknown."""
    extra = _extra_prices()
    for name in (model, (m.group("alias") if (m := _DATED.match(model)) else None)):
        if name and (price := extra.get(name) or PRICES.get(name)):
            return price
    return None


def price_for(model: str) -> Price:
    price = known_price(model)
    if price is not None:
        return price
    with _warned_lock:
        first = model not in _warned
        _warned.add(model)
    if first:  # once per process and model: every call would otherwise log it
        logger.warning(
            "no price for model %r: charging the dearest known rate (%s/%s per MTok); "
            "add it to roastq/llm/pricing.py or LLM_EXTRA_PRICES",
            model,
            UNKNOWN_MODEL_PRICE.input,
            UNKNOWN_MODEL_PRICE.output,
        )
    events.emit("llm_unknown_model", model=model, price=UNKNOWN_MODEL_PRICE)
    return UNKNOWN_MODEL_PRICE


def cost_usd(model: str, usage: Usage, *, batch: bool = False) -> Decimal:
    """Dollars for one call, exact to the micro-dollar; ``batch``: a Message Batches result (50%)."""
    p = price_for(model)
    total = (
        usage.input_tokens * p.input
        + usage.output_tokens * p.output
        + usage.cache_write_tokens * p.cache_write
        + usage.cache_read_tokens * p.cache_read
    ) / MILLION
    if batch:
        total *= BATCH_FACTOR
    return total.quantize(MICRO)
