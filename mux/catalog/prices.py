"""Token prices and the cost of one request from its real usage.

Prices are USD per million tokens, as the providers publish them. Cached prompt tokens are billed at the
cached-input price, the rest of the prompt at the input price; reasoning tokens are already part of
``completion_tokens`` and billed as output.
"""

from __future__ import annotations

from msgspec import Struct

from mux.wire.openai import Usage


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
    "openai/text-embedding-3-small": Price(0.02, 0.0),
    "openai/text-embedding-3-large": Price(0.13, 0.0),
    "openai/text-embedding-ada-002": Price(0.10, 0.0),
    # Anthropic's published list prices (USD / MTok, "Pricing" page of the Claude docs): input, output,
    # cache hits (cached_input), 5-minute cache writes (cache_write; 1-hour writes cost more and are not
    # distinguished). Aliases and snapshot-less names both listed; dated snapshots fall back to them.
    "anthropic/claude-opus-4-5": Price(5.00, 25.00, 0.50, 6.25),
    "anthropic/claude-opus-4-1": Price(15.00, 75.00, 1.50, 18.75),
    "anthropic/claude-opus-4-0": Price(15.00, 75.00, 1.50, 18.75),
    "anthropic/claude-opus-4": Price(15.00, 75.00, 1.50, 18.75),
    "anthropic/claude-sonnet-4-5": Price(3.00, 15.00, 0.30, 3.75),
    "anthropic/claude-sonnet-4-0": Price(3.00, 15.00, 0.30, 3.75),
    "anthropic/claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
    "anthropic/claude-3-7-sonnet": Price(3.00, 15.00, 0.30, 3.75),
    "anthropic/claude-3-7-sonnet-latest": Price(3.00, 15.00, 0.30, 3.75),
    "anthropic/claude-haiku-4-5": Price(1.00, 5.00, 0.10, 1.25),
    "anthropic/claude-3-5-haiku": Price(0.80, 4.00, 0.08, 1.00),
    "anthropic/claude-3-5-haiku-latest": Price(0.80, 4.00, 0.08, 1.00),
    "anthropic/claude-3-haiku": Price(0.25, 1.25, 0.03, 0.30),
    "anthropic/claude-3-opus": Price(15.00, 75.00, 1.50, 18.75),
    # Google's Gemini Developer API list prices (USD / MTok, paid tier, text input; "Gemini Developer API
    # Pricing" page as quoted in early-2026 price guides): input, output (thinking tokens included), context-
    # caching price as cached_input. Pro models: the <=200k-token prompt tier.
    "gemini/gemini-3-pro-preview": Price(2.00, 12.00, 0.20),
    "gemini/gemini-3-flash-preview": Price(0.50, 3.00, 0.05),
    "gemini/gemini-2.5-pro": Price(1.25, 10.00, 0.125),
    "gemini/gemini-2.5-flash": Price(0.30, 2.50, 0.03),
    "gemini/gemini-2.5-flash-lite": Price(0.10, 0.40, 0.01),
    "gemini/gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini/gemini-2.0-flash-001": Price(0.10, 0.40, 0.025),
    "gemini/gemini-2.0-flash-lite": Price(0.075, 0.30),
    "gemini/gemini-2.0-flash-lite-001": Price(0.075, 0.30),
    "gemini/gemini-embedding-001": Price(0.15, 0.0),
}


def cost_of(usage: Usage, price: Price) -> float:
    """Answer the USD cost of ``usage`` at ``price``."""
    cached = usage.cached_tokens
    written = usage.cache_write_tokens
    fresh = max(usage.prompt_tokens - cached - written, 0)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    total = fresh * price.input + cached * cached_price + written * write_price + usage.completion_tokens * price.output
    return round(total / 1_000_000, 10)
