"""One ledger row: the record of one request that reached the gateway, whatever its outcome.

Cost is kept exact as an integer count of nano-USD (``cost_nano``, 1e-9 USD): sums over millions of rows
stay exact, and a budget reading its spend back compares integers. ``cost_usd`` is the float view;
``nano_usd`` converts a float cost (as providers and the price table give it) into the stored integer.

The row never holds a key (only the key's *name*). ``request_body`` / ``response_body`` are the raw bytes,
and only the ``LedgerWriter`` built with ``store_bodies=True`` (``ledger.store_bodies: true``) keeps them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mux.money.units import to_nano

NANO_PER_USD = 1_000_000_000


def nano_usd(usd: float | None) -> int:
    """Answer ``usd`` as a whole number of nano-USD (``None`` is 0), rounded as a budget charges it
    (``mux.money.units.to_nano``: up, unless within float noise of a whole one), so the ledger's spend of a
    scope is what its budget settled."""
    return to_nano(usd) if usd else 0


class LedgerRow(msgspec.Struct, kw_only=True, gc=False):
    """The record of one request. ``created_at`` is epoch seconds (UTC); times are milliseconds."""

    request_id: str  # the x-mux-request-id; the row's identity (writes are idempotent by it)
    created_at: float
    response_id: str | None = None  # the response's `id` (chatcmpl-…), when there was one
    key_name: str | None = None
    team: str | None = None
    end_user: str | None = None
    tags: dict[str, str] = {}
    session_id: str | None = None
    model_requested: str | None = None  # what the client asked for (a model, alias or @route)
    model_used: str | None = None  # the model that answered (None when no attempt was made)
    provider: str | None = None
    route: str | None = None
    route_version: int | None = None
    strategy: str | None = None
    status: int = 200  # the HTTP status the client got
    error_code: str | None = None  # the OpenAI-shaped error `code`, for a refused or failed request
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nano: int = 0  # exact cost in nano-USD; see ``cost_usd``
    latency_ms: float = 0.0  # request received → last byte sent
    ttfb_ms: float | None = None  # request received → first response byte (None when nothing was sent)
    stream: bool = False
    cache_status: str | None = None  # "hit" | "miss" | "skip"
    budget_outcome: str | None = None  # e.g. "admitted" | "exceeded" | None when no budget applied
    rate_limit_outcome: str | None = None  # e.g. "admitted" | "limited" | None when no limit applied
    finish_reason: str | None = None
    trace: dict[str, Any] | None = None  # the decision trace (mux.decision)
    request_body: bytes | None = None
    response_body: bytes | None = None

    @property
    def cost_usd(self) -> float:
        """The cost in USD (a float view of ``cost_nano``)."""
        return self.cost_nano / NANO_PER_USD

    @property
    def is_error(self) -> bool:
        return self.status >= 400
