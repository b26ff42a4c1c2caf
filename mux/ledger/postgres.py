"""The PostgreSQL ledger store (``store: postgresql://…``): one ledger written by several replicas.

An asyncpg pool; each batch is one ``INSERT … SELECT FROM unnest(…) ON CONFLICT (request_id) DO NOTHING``
(one round trip whatever the batch size), then its tags likewise. The schema is created on ``open`` inside
the given PostgreSQL schema (default ``public``) and versioned in ``ledger_schema_version``; replicas starting
together take an advisory lock so only one creates or migrates it. ``MIGRATIONS[i]`` brings version ``i`` to
``i + 1``; a schema written by a newer mux is refused.

Tags live twice, as in the SQLite store: as JSON on the row and one row per tag in ``ledger_tags`` with a
B-tree index ``(name, value, created_at, request_id)``, so the two stores share their queries (a GIN index
on JSONB would answer containment but not "newest first by tag"). Tags and trace are ``json`` (not
``jsonb``, which refuses ``\\u0000``). PostgreSQL text cannot hold NUL characters: a NUL in a text field (a
client-supplied tag, say) is stored as U+FFFD rather than failing the whole batch forever, and a query
parameter is read the same way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from mux.ledger.row import COLUMNS, CREATED_AT, NO_TAGS, REQUEST_ID, TAGS, RowValues, tags_of
from mux.ledger.sql import Params, SqlLedgerStore, partial_indexes
from mux.stores.lifecycle import Connected

TYPES = {
    "request_id": "text",
    "created_at": "double precision",
    "response_id": "text",
    "key_name": "text",
    "team": "text",
    "end_user": "text",
    "tags": "json",
    "session_id": "text",
    "model_requested": "text",
    "model_used": "text",
    "provider": "text",
    "route": "text",
    "route_version": "integer",
    "strategy": "text",
    "status": "integer",
    "error_code": "text",
    "attempts": "integer",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "cached_tokens": "integer",
    "cache_write_tokens": "integer",
    "reasoning_tokens": "integer",
    "cost_nano": "bigint",
    "latency_ms": "double precision",
    "ttfb_ms": "double precision",
    "stream": "boolean",
    "cache_status": "text",
    "budget_outcome": "text",
    "rate_limit_outcome": "text",
    "finish_reason": "text",
    "trace": "json",
    "request_body": "bytea",
    "response_body": "bytea",
}
assert tuple(TYPES) == COLUMNS, "the PostgreSQL column types must follow LedgerRow's fields"
_REQUIRED = {
    "request_id",
    "created_at",
    "tags",
    "status",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nano",
    "latency_ms",
    "stream",
}
_TEXT = [i for i, c in enumerate(COLUMNS) if TYPES[c] == "text"]
_SENT_AS = {"json": "text", "boolean": "integer"}  # a row's values hold JSON text and 0 or 1 (mux.ledger.row)


def schema_v1(s: str) -> list[str]:
    columns = ",\n    ".join(
        f"{c} {TYPES[c]}{' PRIMARY KEY' if c == 'request_id' else ' NOT NULL' if c in _REQUIRED else ''}"
        for c in COLUMNS
    )
    return [
        f"CREATE TABLE {s}.ledger (\n    {columns}\n)",
        f"CREATE INDEX ledger_time ON {s}.ledger (created_at, request_id)",
        f"CREATE INDEX ledger_key_time ON {s}.ledger (key_name, created_at, request_id)",
        f"CREATE INDEX ledger_team_time ON {s}.ledger (team, created_at)",
        f"CREATE INDEX ledger_end_user_time ON {s}.ledger (end_user, created_at)",
        f"CREATE INDEX ledger_model_time ON {s}.ledger (model_used, created_at, request_id)",
        f"CREATE INDEX ledger_response ON {s}.ledger (response_id)",
        f"CREATE TABLE {s}.ledger_tags (request_id text NOT NULL, name text NOT NULL, value text NOT NULL, "
        "created_at double precision NOT NULL, PRIMARY KEY (request_id, name))",
        f"CREATE INDEX ledger_tags_lookup ON {s}.ledger_tags (name, value, created_at, request_id)",
    ]


def schema_v2(s: str) -> list[str]:
    return partial_indexes(f"{s}.ledger", f"{s}.")


MIGRATIONS = [schema_v1, schema_v2]


def _clean(text: str | None) -> str | None:
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


class PostgresLedgerStore(Connected[asyncpg.Pool], SqlLedgerStore):
    """A ledger in the PostgreSQL database at ``dsn``, in the schema ``schema``."""

    _name = "the ledger store"

    numbered_params = True
    text_order = ' COLLATE "C"'
    native_percentiles = True

    def __init__(self, dsn: str, *, schema: str = "public", min_size: int = 1, max_size: int = 4) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise ValueError(f"not a plain PostgreSQL schema name: {schema!r}")
        self.schema = schema
        self.ledger, self.tags = f'"{schema}".ledger', f'"{schema}".ledger_tags'
        self._dsn, self._min_size, self._max_size = dsn, min_size, max_size
        selected = ", ".join(f"u.{c}::{TYPES[c]}" if TYPES[c] in _SENT_AS else f"u.{c}" for c in COLUMNS)
        arrays = ", ".join(f"${i}::{_SENT_AS.get(TYPES[c], TYPES[c])}[]" for i, c in enumerate(COLUMNS, 1))
        self._insert_rows = (
            f"INSERT INTO {self.ledger} ({', '.join(COLUMNS)}) SELECT {selected} "
            f"FROM unnest({arrays}) AS u({', '.join(COLUMNS)}) "
            "ON CONFLICT (request_id) DO NOTHING RETURNING 1"
        )
        self._insert_tags = (
            f"INSERT INTO {self.tags} (request_id, name, value, created_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::double precision[]) "
            "ON CONFLICT (request_id, name) DO NOTHING"
        )

    async def _connect(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(self._dsn, min_size=self._min_size, max_size=self._max_size)
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _disconnect(self, pool: asyncpg.Pool) -> None:
        await pool.close()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        s = f'"{self.schema}"'
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"mux.ledger:{self.schema}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.ledger_schema_version "
                "(version integer PRIMARY KEY, applied_at double precision NOT NULL)"
            )
            version = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {s}.ledger_schema_version")
            if version > len(MIGRATIONS):
                raise RuntimeError(f"the ledger schema is version {version}; this mux knows up to {len(MIGRATIONS)}")
            for target in range(version + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[target - 1](s):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {s}.ledger_schema_version VALUES ($1, $2)", target, time.time())

    async def write(self, rows: Sequence[RowValues]) -> int:
        if not rows:
            return 0
        columns = [list(c) for c in zip(*rows, strict=True)]
        for i in _TEXT:
            columns[i] = [_clean(v) for v in columns[i]]
        tags = [
            (_clean(values[REQUEST_ID]), _clean(name), _clean(value), values[CREATED_AT])
            for values in rows
            if values[TAGS] != NO_TAGS
            for name, value in tags_of(values).items()
        ]
        async with self._conn().acquire() as conn, conn.transaction():
            written = len(await conn.fetch(self._insert_rows, *columns))
            if tags:
                await conn.execute(self._insert_tags, *(list(c) for c in zip(*tags, strict=False)))
        return written

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        # a NUL in a filter must find the row stored with U+FFFD in its place (and text parameters hold no NUL)
        return await self._conn().fetch(sql, *(_clean(v) if isinstance(v, str) else v for v in params))

    async def _plan(self, sql: str, params: Sequence[Any]) -> str:
        return "\n".join(r[0] for r in await self._fetch("EXPLAIN " + sql, params))

    def _bucket(self, seconds: int) -> str:
        return f"(floor(l.created_at / {seconds}) * {seconds})::bigint"

    def _in(self, p: Params, expression: str, values: list[str]) -> str:
        return f"{expression} = ANY({p(values)}::text[])"
