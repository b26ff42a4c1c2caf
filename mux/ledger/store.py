"""The ledger store contract (``LedgerStore``) and the query arguments every store reads the same way.

A store keeps ``LedgerRow`` records, written as their values (``mux.ledger.row.RowValues``), and answers four
questions: one record by id (``get``), recent records (``requests``, newest first, keyset-paginated),
per-group time series (``analytics``) and a scope's spend since a time (``spend``, what a budget reads back
after a restart). ``write`` is idempotent by
``request_id``: replaying rows writes nothing twice.

Bad query arguments (an unknown ``group_by``, a malformed cursor, too wide a window) raise
``InvalidRequest`` with the offending ``param``, so an HTTP endpoint can answer them as they are.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

from mux.errors import InvalidRequest
from mux.ledger.row import LedgerRow, RowValues

MAX_LIMIT = 500  # rows per page of `requests`
DEFAULT_LIMIT = 50
MAX_GROUPS = 1000  # groups per `analytics` answer (the busiest ones)
MAX_BUCKETS = 1000  # interval buckets per `analytics` window (about 41 days by hour, 2.7 years by day)
MAX_CELLS = 50_000  # (group, bucket) entries per `analytics` answer: fewer groups when there are many buckets
INTERVALS = {"hour": 3600, "day": 86400}
GROUP_COLUMNS = {
    "key": "key_name",
    "team": "team",
    "end_user": "end_user",
    "model": "model_used",
    "provider": "provider",
    "route": "route",
}  # and "tag:NAME"
PERCENTILES = (0.5, 0.95, 0.99)


class LedgerStore(Protocol):
    async def open(self) -> None:
        """Connect and create (or migrate) the schema."""

    async def close(self) -> None: ...

    async def write(self, rows: Sequence[RowValues]) -> int:
        """Insert ``rows`` (each one a row's values) in one transaction; answer how many were new (a known
        ``request_id`` is skipped)."""

    async def get(self, id: str, key_name: str | None = None) -> LedgerRow | None:
        """Answer the record whose request id or response id is ``id`` (the request id wins; then the newest),
        only among ``key_name``'s records when it is given."""

    async def requests(
        self,
        *,
        key: str | None = None,
        status: int | None = None,
        model: str | None = None,
        tag: tuple[str, str] | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> tuple[list[LedgerRow], str | None]:
        """Answer up to ``limit`` (at most 500) records matching every filter given, newest first, without
        bodies, and the cursor of the next page (``None`` on the last)."""

    async def analytics(
        self, from_ts: float, to_ts: float, group_by: str, interval: str = "hour", *, max_groups: int = MAX_GROUPS
    ) -> list[dict]:
        """Answer per group and interval bucket over ``from_ts <= created_at < to_ts``: requests, errors,
        tokens by class, cost and latency / first-byte percentiles (see ``README``); the busiest groups only."""

    async def spend(
        self,
        since_ts: float,
        *,
        key_name: str | None = None,
        team: str | None = None,
        end_user: str | None = None,
        tag: tuple[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> int:
        """Answer the nano-USD spent since ``since_ts`` by the records matching every filter given (all
        records when none is); ``tags`` are more tag filters, each one a condition like ``tag``."""


def encode_cursor(created_at: float, request_id: str) -> str:
    """Answer an opaque cursor for the page after the record (created_at, request_id)."""
    return base64.urlsafe_b64encode(msgspec.json.encode([created_at, request_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, request_id = msgspec.json.decode(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), type=tuple[float, str]
        )
    except (ValueError, msgspec.DecodeError) as exc:
        raise InvalidRequest("cursor is not one this server answered", param="cursor") from exc
    return created_at, request_id


def page_limit(limit: int) -> int:
    if limit < 1:
        raise InvalidRequest("limit must be at least 1", param="limit")
    return min(limit, MAX_LIMIT)


def group_of(group_by: str) -> tuple[str | None, str | None]:
    """Answer (column, tag name) for a ``group_by``: exactly one of them is set."""
    if group_by in GROUP_COLUMNS:
        return GROUP_COLUMNS[group_by], None
    if group_by.startswith("tag:") and len(group_by) > 4:
        return None, group_by[4:]
    raise InvalidRequest(f"group_by must be one of {', '.join(GROUP_COLUMNS)} or tag:NAME", param="group_by")


def buckets_of(from_ts: float, to_ts: float, interval: str) -> tuple[int, int]:
    """Answer (bucket seconds, number of buckets) of the window, refusing an unknown interval or a window
    of more than ``MAX_BUCKETS`` buckets."""
    seconds = INTERVALS.get(interval)
    if seconds is None:
        raise InvalidRequest("interval must be hour or day", param="interval")
    if not to_ts > from_ts:
        raise InvalidRequest("to must be after from", param="to")
    count = math.ceil(to_ts / seconds) - math.floor(from_ts / seconds)
    if count > MAX_BUCKETS:
        raise InvalidRequest(f"the window holds {count} {interval}s; at most {MAX_BUCKETS} are answered", param="from")
    return seconds, count


def percentile(values: dict[int, float], n: int, p: float) -> float | None:
    """Answer the ``p`` percentile of ``n`` sorted values by linear interpolation, as PostgreSQL's
    ``percentile_cont`` does, given the values at positions ``floor(p*(n-1))`` and the one after it."""
    if n == 0:
        return None
    position = p * (n - 1)
    low = math.floor(position)
    first = values[low]
    if low + 1 >= n:
        return first
    return first + (position - low) * (values[low + 1] - first)
