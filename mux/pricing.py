"""Token prices and the cost of one request from its real usage.

Prices are USD per million tokens, as the providers publish them. Cached prompt tokens are billed at the
cached-input price, the rest of the prompt at the input price; reasoning tokens are already part of
``completion_tokens`` and billed as output.
"""

from __future__ import annotations

import re

from msgspec import Struct

from .wire import Usage


class Price(Struct, frozen=True):
    input: float
    output: float
    cached_input: float | None = None  # defaults to the input price
    cache_write: float | None = None  # defaults to the input price


# OpenAI's published per-million-token list prices (standard tier).
PRICES: dict[str, Price] = {
    "openai/gpt-4o": Price(2.50, 10.00, 1.25),
    "openai/gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "openai/gpt-4.1": Price(2.00, 8.00, 0.50),
    "openai/gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "openai/gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "openai/gpt-5": Price(1.25, 10.00, 0.125),
    "openai/gpt-5-mini": Price(0.25, 2.00, 0.025),
    "openai/gpt-5-nano": Price(0.05, 0.40, 0.005),
    "openai/o1": Price(15.00, 60.00, 7.50),
    "openai/o3": Price(2.00, 8.00, 0.50),
    "openai/o3-mini": Price(1.10, 4.40, 0.55),
    "openai/o4-mini": Price(1.10, 4.40, 0.275),
}


_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$|-\d{8}$")


def price_of(provider_type: str, model: str, prices: dict[str, Price] = PRICES) -> Price | None:
    """Answer the price of ``model`` at a provider of ``provider_type``; dated snapshots
    (``gpt-4o-mini-2024-07-18``) fall back to their base name."""
    key = f"{provider_type}/{model}"
    price = prices.get(key)
    if price is None:
        base = _SNAPSHOT.sub("", key)
        price = prices.get(base) if base != key else None
    return price


def cost_of(usage: Usage, price: Price) -> float:
    """Answer the USD cost of ``usage`` at ``price``."""
    cached = usage.cached_tokens
    written = usage.cache_write_tokens
    fresh = max(usage.prompt_tokens - cached - written, 0)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    total = fresh * price.input + cached * cached_price + written * write_price + usage.completion_tokens * price.output
    return round(total / 1_000_000, 10)
