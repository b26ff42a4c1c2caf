"""The admin's view of the request ledger (routed by ``mux.admin.routes``; admin token required):

- ``GET /admin/requests?key=&status=&model=&tag=NAME:VALUE&limit=&cursor=``: recent requests, newest first,
  ``{"data": [...], "next_cursor": "…" | null}`` (``limit`` 50 by default, 500 at most; pass ``next_cursor``
  back as ``cursor`` for the next page);
- ``GET /admin/analytics?from=&to=&group_by=&interval=``: per group and interval bucket, requests, errors,
  tokens by class, cost and p50/p95/p99 latency and time to first byte. ``from``/``to`` are ISO 8601 (default:
  the 24 hours up to now), ``group_by`` is ``key``, ``team``, ``end_user``, ``tag:NAME``, ``model`` (the
  default), ``provider`` or ``route``, ``interval`` is ``hour`` (the default) or ``day``. The busiest groups
  only (``mux.ledger.store``: at most 1000 groups and 50 000 cells); the queries walk the indexes listed in
  ``mux.ledger.sql``.

Both first write the rows still queued (``LedgerWriter.flush``, one second at most), so they include the
requests that just ended. A malformed parameter is a 400 naming it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from mux.asgi import Scope
from mux.errors import InvalidRequest, MuxError, NotFound
from mux.ledger import LedgerWriter
from mux.ledger.store import DEFAULT_LIMIT, buckets_of, decode_cursor, group_of, page_limit
from mux.ledger.views import LedgerUnavailable, int_param, iso, parse_time, query_of, row_view

PATHS = frozenset({"/admin/requests", "/admin/analytics"})
REQUESTS_PARAMS = ("key", "status", "model", "tag", "limit", "cursor")
ANALYTICS_PARAMS = ("from", "to", "group_by", "interval")
DEFAULT_WINDOW_S = 86400
FLUSH_WAIT_S = 1.0

Query = Callable[[LedgerWriter], Awaitable[dict[str, Any]]]


async def answer(ledger: LedgerWriter | None, path: str, scope: Scope) -> dict[str, Any]:
    """Answer ``/admin/requests`` or ``/admin/analytics`` for the request ``scope``: every parameter is
    checked before the ledger is read."""
    if ledger is None:
        raise NotFound("The request ledger is off: configure a `ledger:` section.")
    if path == "/admin/requests":
        run = requests_query(query_of(scope, REQUESTS_PARAMS))
    else:
        run = analytics_query(query_of(scope, ANALYTICS_PARAMS))
    await ledger.flush(FLUSH_WAIT_S)
    try:
        return await run(ledger)
    except MuxError:
        raise
    except Exception as exc:  # noqa: BLE001 - the store's failure, whatever its driver calls it
        raise LedgerUnavailable(f"The ledger store could not answer: {type(exc).__name__}.") from exc


def requests_query(query: dict[str, str]) -> Query:
    """Check the parameters of ``/admin/requests``; answer the query to run."""
    status, limit = int_param(query, "status"), int_param(query, "limit")
    limit = page_limit(DEFAULT_LIMIT if limit is None else limit)
    cursor = query.get("cursor") or None
    if cursor is not None:
        decode_cursor(cursor)
    tag: tuple[str, str] | None = None
    if "tag" in query:
        name, colon, value = query["tag"].partition(":")
        if not colon or not name:
            raise InvalidRequest("tag must be NAME:VALUE.", param="tag")
        tag = (name, value)

    async def run(ledger: LedgerWriter) -> dict[str, Any]:
        rows, next_cursor = await ledger.store.requests(
            key=query.get("key"), status=status, model=query.get("model"), tag=tag, limit=limit, cursor=cursor
        )
        return {"data": [row_view(r) for r in rows], "next_cursor": next_cursor}

    return run


def analytics_query(query: dict[str, str]) -> Query:
    """Check the parameters of ``/admin/analytics``; answer the query to run."""
    to_ts = parse_time(query["to"], "to") if "to" in query else time.time()
    from_ts = parse_time(query["from"], "from") if "from" in query else to_ts - DEFAULT_WINDOW_S
    group_by, interval = query.get("group_by") or "model", query.get("interval") or "hour"
    group_of(group_by)
    buckets_of(from_ts, to_ts, interval)

    async def run(ledger: LedgerWriter) -> dict[str, Any]:
        cells = await ledger.store.analytics(from_ts, to_ts, group_by, interval)
        for cell in cells:
            cell["bucket"] = iso(cell["bucket"])
        return {"from": iso(from_ts), "to": iso(to_ts), "group_by": group_by, "interval": interval, "data": cells}

    return run
