"""One ledger row: the record of one request that reached the gateway, whatever its outcome.

``LedgerRow`` is the record as a store answers it. A row is *written* as its values (``RowValues``): a plain
tuple in ``COLUMNS`` order, ``tags`` and ``trace`` as JSON text and ``stream`` as 0 or 1, which is what the
stores bind, so the request path builds one tuple and nothing converts it again. ``row_values`` answers the
values of a ``LedgerRow``; ``row_of`` the record of values read back.

Cost is kept exact as an integer count of nano-USD (``cost_nano``, 1e-9 USD): sums over millions of rows
stay exact, and a budget reading its spend back compares integers. ``cost_usd`` is the float view;
``nano_usd`` converts a float cost (as providers and the price table give it) into the stored integer.

The row never holds a key (only the key's *name*). ``request_body`` / ``response_body`` are the raw bytes,
and only the ``LedgerWriter`` built with ``store_bodies=True`` (``ledger.store_bodies: true``) keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    request_body: bytes | None = None  # the last two fields: a writer without bodies drops them
    response_body: bytes | None = None

    @property
    def cost_usd(self) -> float:
        """The cost in USD (a float view of ``cost_nano``)."""
        return self.cost_nano / NANO_PER_USD

    @property
    def is_error(self) -> bool:
        return self.status >= 400


COLUMNS: tuple[str, ...] = LedgerRow.__struct_fields__  # the table's columns, in the order of a row's values
RowValues = tuple  # a row as written: its values in COLUMNS order (see the module docstring)
REQUEST_ID, CREATED_AT, TAGS, STREAM, TRACE, REQUEST_BODY, RESPONSE_BODY = (
    COLUMNS.index(c) for c in ("request_id", "created_at", "tags", "stream", "trace", "request_body", "response_body")
)
assert RESPONSE_BODY == len(COLUMNS) - 1 and REQUEST_BODY == RESPONSE_BODY - 1, "the bodies come last"
NO_TAGS = "{}"  # the ``tags`` value of a row without tags

encode_json = msgspec.json.Encoder().encode
_tags_decoder = msgspec.json.Decoder(dict[str, str])


def json_text(value: Any) -> str:
    """Answer ``value`` as JSON text (as ``tags`` and ``trace`` are written)."""
    return encode_json(value).decode()


def row_values(row: LedgerRow) -> RowValues:
    """Answer the values ``row`` is written as."""
    values = list(msgspec.structs.astuple(row))
    values[TAGS] = json_text(row.tags) if row.tags else NO_TAGS
    values[TRACE] = None if row.trace is None else json_text(row.trace)
    values[STREAM] = 1 if row.stream else 0
    return tuple(values)


def tags_of(values: Sequence[Any]) -> dict[str, str]:
    """Answer the tags of a row's values."""
    text = values[TAGS]
    return {} if not text or text == NO_TAGS else _tags_decoder.decode(text)
