"""The queries both SQL stores run, written once; each store supplies its dialect and its I/O.

A store subclasses ``SqlLedgerStore`` and provides ``_fetch`` (run a query, answer tuples), ``_plan``
(answer the query plan of one) and the few dialect spellings below. Everything the stores answer is built
here, so SQLite and PostgreSQL answer the same records in the same order.

Indexes (created by each store) and the queries they serve:

* ``ledger_time (created_at, request_id)``: analytics windows, unfiltered pages of ``requests``, ``spend``
  of everything;
* ``ledger_key_time (key_name, created_at, request_id)``: ``requests(key=)``, ``spend(key_name=)``;
* ``ledger_team_time``, ``ledger_end_user_time``: ``spend(team=)``, ``spend(end_user=)``;
* ``ledger_model_time (model_used, created_at, request_id)``: ``requests(model=)``;
* ``ledger_response (response_id)``: ``get`` by response id (by request id: the primary key);
* ``ledger_tags_lookup (name, value, created_at, request_id)`` on the tag side table: ``requests(tag=)``
  and ``spend(tag=)`` walk it in time order; ``analytics(group_by="tag:NAME")`` and the further tags of
  ``spend(tags=)`` join it by its primary key ``(request_id, name)``.

Pages are keyset-paginated on (created_at, request_id), newest first, so a page costs its size whatever its
depth. ``status`` has no index: it is filtered while walking one of the indexes above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from mux.ledger.row import COLUMNS, NANO_PER_USD, STREAM, TAGS, TRACE, LedgerRow, tags_of
from mux.ledger.store import (
    DEFAULT_LIMIT,
    MAX_CELLS,
    MAX_GROUPS,
    PERCENTILES,
    buckets_of,
    decode_cursor,
    encode_cursor,
    group_of,
    page_limit,
    percentile,
)

# Version 2 of the schema made these indexes partial (``WHERE <first column> IS NOT NULL``): each one serves
# queries that look a value up, so a row without the value (no key, no response) has nothing to add to it.
PARTIAL_INDEXES = {
    "ledger_key_time": "key_name, created_at, request_id",
    "ledger_team_time": "team, created_at",
    "ledger_end_user_time": "end_user, created_at",
    "ledger_model_time": "model_used, created_at, request_id",
    "ledger_response": "response_id",
}


def partial_indexes(ledger: str, schema: str = "") -> list[str]:
    """Answer the statements that make ``PARTIAL_INDEXES`` partial on the table ``ledger`` (``schema``: the
    qualifier of an index name, with its dot)."""
    return [f"DROP INDEX {schema}{name}" for name in PARTIAL_INDEXES] + [
        f"CREATE INDEX {name} ON {ledger} ({columns}) WHERE {columns.split(',')[0]} IS NOT NULL"
        for name, columns in PARTIAL_INDEXES.items()
    ]


SELECT_ROW = ", ".join(f"l.{c}" for c in COLUMNS)
SELECT_ROW_NO_BODIES = ", ".join("NULL" if c.endswith("_body") else f"l.{c}" for c in COLUMNS)

_trace_decoder = msgspec.json.Decoder()


def row_of(record: Sequence[Any]) -> LedgerRow:
    """Answer the row of a record selected as ``SELECT_ROW`` (tags and trace as JSON text)."""
    values = list(record)
    values[TAGS] = tags_of(values)
    values[TRACE] = None if values[TRACE] is None else _trace_decoder.decode(values[TRACE])
    values[STREAM] = bool(values[STREAM])
    return LedgerRow(**dict(zip(COLUMNS, values, strict=False)))


class Params:
    """Collects query parameters and answers each one's placeholder (``?`` or ``$n``)."""

    def __init__(self, numbered: bool) -> None:
        self.values: list[Any] = []
        self._numbered = numbered

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}" if self._numbered else "?"


class SqlLedgerStore:
    """The read queries of a SQL ledger store. Subclasses set the attributes and implement the methods below."""

    ledger = "ledger"  # table names, qualified as the store needs
    tags = "ledger_tags"
    numbered_params = False  # $1, $2 … instead of ?
    text_order = ""  # appended to a text ORDER BY term for a byte-order (locale-free) sort
    native_percentiles = False  # percentile_cont(…) WITHIN GROUP exists

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        raise NotImplementedError

    async def _plan(self, sql: str, params: Sequence[Any]) -> str:
        raise NotImplementedError

    def _bucket(self, seconds: int) -> str:
        """Answer the expression of a record's bucket start (epoch seconds) for buckets of ``seconds``."""
        raise NotImplementedError

    def _in(self, p: Params, expression: str, values: list[str]) -> str:
        raise NotImplementedError

    # get

    def _get_sql(self, id: str, key_name: str | None = None, by: str = "request_id") -> tuple[str, list[Any]]:
        p = Params(self.numbered_params)
        where = f"l.{by} = {p(id)}" + ("" if key_name is None else f" AND l.key_name = {p(key_name)}")
        return f"SELECT {SELECT_ROW} FROM {self.ledger} l WHERE {where} ORDER BY l.created_at DESC LIMIT 1", p.values

    async def get(self, id: str, key_name: str | None = None) -> LedgerRow | None:
        for by in ("request_id", "response_id"):  # two indexed lookups; the request id wins
            records = await self._fetch(*self._get_sql(id, key_name, by))
            if records:
                return row_of(records[0])
        return None

    # requests

    def _requests_sql(
        self,
        *,
        key: str | None = None,
        status: int | None = None,
        model: str | None = None,
        tag: tuple[str, str] | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> tuple[str, list[Any]]:
        p = Params(self.numbered_params)
        limit = page_limit(limit)
        join, order, where = "", "l", []
        if tag is not None:  # walk the tag index in time order: its rows carry created_at too
            join = (
                f" JOIN {self.tags} t ON t.request_id = l.request_id AND t.name = {p(tag[0])} AND t.value = {p(tag[1])}"
            )
            order = "t"
        if key is not None:
            where.append(f"l.key_name = {p(key)}")
        if status is not None:
            where.append(f"l.status = {p(status)}")
        if model is not None:
            where.append(f"l.model_used = {p(model)}")
        if cursor is not None:
            created_at, request_id = decode_cursor(cursor)
            where.append(f"({order}.created_at, {order}.request_id) < ({p(created_at)}, {p(request_id)})")
        sql = (
            f"SELECT {SELECT_ROW_NO_BODIES} FROM {self.ledger} l{join}"
            f"{' WHERE ' + ' AND '.join(where) if where else ''} "
            f"ORDER BY {order}.created_at DESC, {order}.request_id DESC LIMIT {p(limit + 1)}"
        )
        return sql, p.values

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
        limit = page_limit(limit)
        records = await self._fetch(
            *self._requests_sql(key=key, status=status, model=model, tag=tag, limit=limit, cursor=cursor)
        )
        rows = [row_of(r) for r in records[:limit]]
        more = len(records) > limit
        return rows, encode_cursor(rows[-1].created_at, rows[-1].request_id) if more else None

    # spend

    def _spend_sql(
        self,
        since_ts: float,
        *,
        key_name: str | None = None,
        team: str | None = None,
        end_user: str | None = None,
        tag: tuple[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> tuple[str, list[Any]]:
        p = Params(self.numbered_params)
        join, where = "", []
        wanted = ([tag] if tag is not None else []) + list((tags or {}).items())
        for i, (name, wanted_value) in enumerate(wanted):  # the first walks the tag index, the others its key
            join += (
                f" JOIN {self.tags} t{i} ON t{i}.request_id = l.request_id AND t{i}.name = {p(name)} "
                f"AND t{i}.value = {p(wanted_value)} AND t{i}.created_at >= {p(since_ts)}"
            )
        for column, value in (("key_name", key_name), ("team", team), ("end_user", end_user)):
            if value is not None:
                where.append(f"l.{column} = {p(value)}")
        where.append(f"l.created_at >= {p(since_ts)}")
        return (
            f"SELECT COALESCE(SUM(l.cost_nano), 0) FROM {self.ledger} l{join} WHERE {' AND '.join(where)}",
            p.values,
        )

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
        records = await self._fetch(
            *self._spend_sql(since_ts, key_name=key_name, team=team, end_user=end_user, tag=tag, tags=tags)
        )
        return int(records[0][0])

    # analytics

    def _analytics_source(self, p: Params, from_ts: float, to_ts: float, group_by: str) -> tuple[str, str]:
        """Answer (group expression, FROM … WHERE … over the window) for ``group_by``."""
        column, tag = group_of(group_by)
        if tag is not None:
            source = f"{self.ledger} l LEFT JOIN {self.tags} t ON t.request_id = l.request_id AND t.name = {p(tag)}"
            group = "t.value"
        else:
            source, group = f"{self.ledger} l", f"l.{column}"
        return group, f"FROM {source} WHERE l.created_at >= {p(from_ts)} AND l.created_at < {p(to_ts)}"

    def _top_groups_sql(self, from_ts: float, to_ts: float, group_by: str, cap: int) -> tuple[str, list[Any]]:
        p = Params(self.numbered_params)
        group, source = self._analytics_source(p, from_ts, to_ts, group_by)
        return (
            f"SELECT {group}, COUNT(*) {source} GROUP BY {group} "
            f"ORDER BY COUNT(*) DESC, {group} IS NULL, {group}{self.text_order} LIMIT {p(cap + 1)}",
            p.values,
        )

    def _window_filter(self, p: Params, group: str, groups: list[str | None] | None) -> str:
        if groups is None:
            return ""
        named = [g for g in groups if g is not None]
        terms = [self._in(p, group, named)] if named else []
        if len(named) < len(groups):
            terms.append(f"{group} IS NULL")
        return f" AND ({' OR '.join(terms)})"

    def _aggregate_sql(
        self, from_ts: float, to_ts: float, group_by: str, seconds: int, groups: list[str | None] | None
    ) -> tuple[str, list[Any]]:
        p = Params(self.numbered_params)
        group, source = self._analytics_source(p, from_ts, to_ts, group_by)
        sums = ", ".join(
            f"SUM(l.{c})"
            for c in (
                "prompt_tokens",
                "completion_tokens",
                "cached_tokens",
                "cache_write_tokens",
                "reasoning_tokens",
                "cost_nano",
            )
        )
        percentiles = ""
        if self.native_percentiles:
            ps = ", ".join(str(q) for q in PERCENTILES)
            percentiles = "".join(
                f", percentile_cont(ARRAY[{ps}]::double precision[]) WITHIN GROUP (ORDER BY l.{m})"
                for m in ("latency_ms", "ttfb_ms")
            )
        sql = (
            f"SELECT {group}, {self._bucket(seconds)}, COUNT(*), "
            f"SUM(CASE WHEN l.status >= 400 THEN 1 ELSE 0 END), {sums}{percentiles} "
            f"{source}{self._window_filter(p, group, groups)} GROUP BY 1, 2"
        )
        return sql, p.values

    def _percentile_sql(
        self, from_ts: float, to_ts: float, group_by: str, seconds: int, groups: list[str | None] | None, metric: str
    ) -> tuple[str, list[Any]]:
        """Answer the query of the values at the positions percentiles interpolate between (window functions,
        for a store without percentile_cont): (group, bucket, position, count, value)."""
        p = Params(self.numbered_params)
        group, source = self._analytics_source(p, from_ts, to_ts, group_by)
        bucket = self._bucket(seconds)
        positions = " OR ".join(
            f"i = CAST({q} * (n - 1) AS INTEGER) OR i = CAST({q} * (n - 1) AS INTEGER) + 1" for q in PERCENTILES
        )
        sql = (
            f"SELECT g, b, i, n, v FROM (SELECT {group} AS g, {bucket} AS b, l.{metric} AS v, "
            f"ROW_NUMBER() OVER (PARTITION BY {group}, {bucket} ORDER BY l.{metric}) - 1 AS i, "
            f"COUNT(*) OVER (PARTITION BY {group}, {bucket}) AS n "
            f"{source} AND l.{metric} IS NOT NULL{self._window_filter(p, group, groups)}) w WHERE {positions}"
        )
        return sql, p.values

    async def analytics(
        self, from_ts: float, to_ts: float, group_by: str, interval: str = "hour", *, max_groups: int = MAX_GROUPS
    ) -> list[dict]:
        seconds, buckets = buckets_of(from_ts, to_ts, interval)
        cap = max(1, min(max_groups, MAX_CELLS // buckets))
        top = await self._fetch(*self._top_groups_sql(from_ts, to_ts, group_by, cap))
        rank = {record[0]: i for i, record in enumerate(top[:cap])}
        groups = list(rank) if len(top) > cap else None
        records = await self._fetch(*self._aggregate_sql(from_ts, to_ts, group_by, seconds, groups))
        if self.native_percentiles:
            spreads = {(r[0], int(r[1])): (r[10], r[11]) for r in records}
        else:
            spreads = await self._window_percentiles(from_ts, to_ts, group_by, seconds, groups)
        answer = []
        for r in records:
            group, bucket = r[0], int(r[1])
            if group not in rank:  # a group that appeared after the top query ran
                continue
            latency, ttfb = spreads.get((group, bucket), (None, None))
            cost = int(r[9] or 0)
            answer.append(
                {
                    "group": group,
                    "bucket": bucket,
                    "requests": int(r[2]),
                    "errors": int(r[3] or 0),
                    "prompt_tokens": int(r[4] or 0),
                    "completion_tokens": int(r[5] or 0),
                    "cached_tokens": int(r[6] or 0),
                    "cache_write_tokens": int(r[7] or 0),
                    "reasoning_tokens": int(r[8] or 0),
                    "cost_nano": cost,
                    "cost_usd": cost / NANO_PER_USD,
                    "latency_ms": _spread(latency),
                    "ttfb_ms": _spread(ttfb),
                }
            )
        answer.sort(key=lambda a: (rank[a["group"]], a["bucket"]))
        return answer

    async def _window_percentiles(
        self, from_ts: float, to_ts: float, group_by: str, seconds: int, groups: list[str | None] | None
    ) -> dict[tuple[Any, int], tuple]:
        spreads: dict[tuple[Any, int], list] = {}
        for index, metric in enumerate(("latency_ms", "ttfb_ms")):
            found: dict[tuple[Any, int], tuple[int, dict[int, float]]] = {}
            for g, b, i, n, v in await self._fetch(
                *self._percentile_sql(from_ts, to_ts, group_by, seconds, groups, metric)
            ):
                found.setdefault((g, int(b)), (n, {}))[1][i] = v
            for cell, (n, values) in found.items():
                spreads.setdefault(cell, [None, None])[index] = [percentile(values, n, q) for q in PERCENTILES]
        return {cell: tuple(pair) for cell, pair in spreads.items()}

    # diagnostics

    async def explain(self, method: str, *args: Any, **kwargs: Any) -> str:
        """Answer the query plan of the main query ``method(*args, **kwargs)`` runs (``get``, ``requests``,
        ``spend``, ``analytics``), as the database prints it."""
        if method == "get":
            id, key_name = args[0], args[1] if len(args) > 1 else kwargs.get("key_name")
            return "\n".join(
                [await self._plan(*self._get_sql(id, key_name, by)) for by in ("request_id", "response_id")]
            )
        if method == "analytics":
            from_ts, to_ts, group_by, interval = args
            seconds, _ = buckets_of(from_ts, to_ts, interval)
            return await self._plan(*self._aggregate_sql(from_ts, to_ts, group_by, seconds, None))
        if method == "requests":
            return await self._plan(*self._requests_sql(*args, **kwargs))
        if method == "spend":
            return await self._plan(*self._spend_sql(*args, **kwargs))
        raise ValueError(f"no query plan for {method!r}")


def _spread(values: Sequence[float | None] | None) -> dict[str, float | None]:
    values = values or (None,) * len(PERCENTILES)
    return {
        f"p{round(q * 100)}": (None if v is None or math.isnan(v) else float(v))
        for q, v in zip(PERCENTILES, values, strict=False)
    }
