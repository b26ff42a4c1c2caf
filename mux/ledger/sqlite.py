"""The SQLite ledger store: the embedded default (``store: sqlite:///mux.db``), one file in WAL mode.

One aiosqlite connection (its own thread) serves reads and writes, with ``mux.stores.sqlite_file``'s
settings; each batch is one ``BEGIN IMMEDIATE`` transaction run whole in that thread, so writes never
interleave and several processes may share the file (``busy_timeout`` waits for the lock). The schema is
created on ``open`` and versioned in ``ledger_schema_version``: ``MIGRATIONS[i]`` brings a file from version
``i`` to ``i + 1``; a file written by a newer mux is refused.

Tags live twice: as JSON on the row (to answer it whole) and one row per tag in ``ledger_tags``
``(request_id, name, value, created_at)``, whose index ``(name, value, created_at, request_id)`` answers tag
filters in time order without scanning the ledger (SQLite cannot index inside JSON values by name).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from mux.ledger.row import LedgerRow
from mux.ledger.sql import COLUMNS, Params, SqlLedgerStore, row_values
from mux.stores import sqlite_file

SCHEMA_V1 = [
    """CREATE TABLE ledger (
        request_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        response_id TEXT,
        key_name TEXT,
        team TEXT,
        end_user TEXT,
        tags TEXT NOT NULL DEFAULT '{}',
        session_id TEXT,
        model_requested TEXT,
        model_used TEXT,
        provider TEXT,
        route TEXT,
        route_version INTEGER,
        strategy TEXT,
        status INTEGER NOT NULL,
        error_code TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        cost_nano INTEGER NOT NULL DEFAULT 0,
        latency_ms REAL NOT NULL DEFAULT 0,
        ttfb_ms REAL,
        stream INTEGER NOT NULL DEFAULT 0,
        cache_status TEXT,
        budget_outcome TEXT,
        rate_limit_outcome TEXT,
        finish_reason TEXT,
        trace TEXT,
        request_body BLOB,
        response_body BLOB
    )""",
    "CREATE INDEX ledger_time ON ledger (created_at, request_id)",
    "CREATE INDEX ledger_key_time ON ledger (key_name, created_at, request_id)",
    "CREATE INDEX ledger_team_time ON ledger (team, created_at)",
    "CREATE INDEX ledger_end_user_time ON ledger (end_user, created_at)",
    "CREATE INDEX ledger_model_time ON ledger (model_used, created_at, request_id)",
    "CREATE INDEX ledger_response ON ledger (response_id)",
    """CREATE TABLE ledger_tags (
        request_id TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (request_id, name)
    )""",
    "CREATE INDEX ledger_tags_lookup ON ledger_tags (name, value, created_at, request_id)",
]
MIGRATIONS: list[list[str]] = [SCHEMA_V1]

_INSERT_ROW = (
    f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
_INSERT_TAG = (
    "INSERT INTO ledger_tags (request_id, name, value, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (request_id, name) DO NOTHING"
)


class SQLiteLedgerStore(sqlite_file.SqliteBacked, SqlLedgerStore):
    """A ledger in the SQLite file at ``path``."""

    _name = "the ledger store"

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        super().__init__(path, _migrate, busy_timeout_s=busy_timeout_ms / 1000)

    async def write(self, rows: Sequence[LedgerRow]) -> int:
        if not rows:
            return 0
        values = [row_values(r) for r in rows]
        tags = [(r.request_id, name, value, r.created_at) for r in rows for name, value in r.tags.items()]
        return await sqlite_file.run(self._conn(), _write, values, tags)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        async with self._conn().execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _plan(self, sql: str, params: Sequence[Any]) -> str:
        return "\n".join(r[3] for r in await self._fetch("EXPLAIN QUERY PLAN " + sql, params))

    def _bucket(self, seconds: int) -> str:
        return f"(CAST(l.created_at / {seconds} AS INTEGER) * {seconds})"  # created_at > 0: truncation is floor

    def _in(self, p: Params, expression: str, values: list[str]) -> str:
        return f"{expression} IN ({', '.join(p(v) for v in values)})"


def _write(conn: sqlite3.Connection, values: list[list[Any]], tags: list[tuple[str, str, str, float]]) -> int:
    """Insert the rows and their tags (in the connection's thread, inside BEGIN IMMEDIATE); answer how many
    rows were new."""
    written = conn.executemany(_INSERT_ROW, values).rowcount
    if tags:
        conn.executemany(_INSERT_TAG, tags)
    return written


def _migrate(conn: sqlite3.Connection) -> None:
    """Create or migrate the schema to ``len(MIGRATIONS)`` (``sqlite_file.connect`` runs this in one
    transaction)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS ledger_schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM ledger_schema_version").fetchone()
    if version > len(MIGRATIONS):
        raise RuntimeError(f"the ledger schema is version {version}; this mux knows up to {len(MIGRATIONS)}")
    for target in range(version + 1, len(MIGRATIONS) + 1):
        for statement in MIGRATIONS[target - 1]:
            conn.execute(statement)
        conn.execute("INSERT INTO ledger_schema_version VALUES (?, ?)", (target, time.time()))
