"""The SQLite ledger store: the embedded default (``store: sqlite:///mux.db``), one file in WAL mode.

Reads go through one aiosqlite connection (its own thread) with ``mux.stores.sqlite_file``'s settings. A batch
of rows is written on the event loop itself, through a second, plain connection: one ``BEGIN IMMEDIATE``
transaction and one prepared ``INSERT`` run over the rows, so no thread wakes, no answer crosses back and no
lock changes hands per row, which is the cheapest way to write in CPU. That connection never waits for a lock:
when another process is writing the file, the batch goes to the reading connection's thread instead, which
waits for it (``busy_timeout``). Nor does it checkpoint: the WAL is checkpointed (``PASSIVE``) in that thread
about every ``CHECKPOINT_PAGES`` pages written, so the event loop never waits on a ``fsync``.

Binding ``None`` through Python's ``sqlite3`` takes the adapter lookup's slow path (it looks up, and misses,
two attributes); the module registers an adapter that answers ``None`` for ``None`` (the value bound is the
same NULL) so that a row's dozen empty columns cost what its numbers cost.

The schema is created on ``open`` and versioned in ``ledger_schema_version``: ``MIGRATIONS[i]`` brings a file
from version ``i`` to ``i + 1``; a file written by a newer mux is refused. Version 2 made the indexes by key,
team, end user, model and response id partial (``WHERE … IS NOT NULL``): their queries look a value up, so a
row without one (a gateway without keys has no key name) costs them nothing.

Tags live twice: as JSON on the row (to answer it whole) and one row per tag in ``ledger_tags``
``(request_id, name, value, created_at)``, whose index ``(name, value, created_at, request_id)`` answers tag
filters in time order without scanning the ledger (SQLite cannot index inside JSON values by name).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import aiosqlite

from mux.ledger.row import COLUMNS, CREATED_AT, NO_TAGS, REQUEST_ID, TAGS, RowValues, tags_of
from mux.ledger.sql import Params, SqlLedgerStore, partial_indexes
from mux.stores import StoreUnavailable, sqlite_file

sqlite3.register_adapter(type(None), {}.get)  # type: ignore[arg-type]  # a C callable answering None for None

CHECKPOINT_PAGES = 1000  # SQLite's own automatic checkpoint interval
_PAGES_PER_WRITE = 8  # a transaction's pages besides its rows': the leaf each index and the table end on

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
SCHEMA_V2 = partial_indexes("ledger")
MIGRATIONS: list[list[str]] = [SCHEMA_V1, SCHEMA_V2]

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
        self._direct: sqlite3.Connection | None = None  # the event loop's writing connection, while open
        self._pages = 0  # written (about) since the last checkpoint
        self._checkpoint: asyncio.Task | None = None

    async def _connect(self) -> aiosqlite.Connection:
        db = await super()._connect()
        try:
            direct = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            direct.execute("PRAGMA synchronous = NORMAL")
            direct.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as e:
            await db.close()
            raise StoreUnavailable(f"cannot open the SQLite ledger file {self.path!r}: {e}") from None
        self._direct = direct
        return db

    async def _disconnect(self, db: aiosqlite.Connection) -> None:
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()
        await super()._disconnect(db)

    async def write(self, rows: Sequence[RowValues]) -> int:
        if not rows:
            return 0
        direct = self._direct
        if direct is None:
            self._check_open()
        assert direct is not None
        tags = [
            (values[REQUEST_ID], name, value, values[CREATED_AT])
            for values in rows
            if values[TAGS] != NO_TAGS
            for name, value in tags_of(values).items()
        ]
        try:
            direct.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise StoreUnavailable(f"SQLite ledger: {e}") from None
            # another process is writing the file: wait for it in the reading connection's thread
            written = await sqlite_file.run(self._conn(), _write, rows, tags)
        else:
            try:
                written = _write(direct, rows, tags)
                direct.execute("COMMIT")
            except BaseException as e:
                if direct.in_transaction:
                    direct.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StoreUnavailable(f"SQLite ledger: {e}") from None
                raise
        self._pages += _PAGES_PER_WRITE + len(rows) // 4
        if self._pages >= CHECKPOINT_PAGES and self._checkpoint is None:
            self._pages = 0
            self._checkpoint = asyncio.get_running_loop().create_task(self._checkpoint_wal())
        return written

    async def _checkpoint_wal(self) -> None:
        """Copy the WAL's pages into the file, in the reading connection's thread (``PASSIVE``: it waits for
        no reader and no writer, and what it cannot copy now the next one does)."""
        try:
            await self._conn().execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        except (sqlite3.Error, RuntimeError, ValueError):
            pass  # a busy or closing file: the next checkpoint copies what this one did not
        finally:
            self._checkpoint = None

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        async with self._conn().execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _plan(self, sql: str, params: Sequence[Any]) -> str:
        return "\n".join(r[3] for r in await self._fetch("EXPLAIN QUERY PLAN " + sql, params))

    def _bucket(self, seconds: int) -> str:
        return f"(CAST(l.created_at / {seconds} AS INTEGER) * {seconds})"  # created_at > 0: truncation is floor

    def _in(self, p: Params, expression: str, values: list[str]) -> str:
        return f"{expression} IN ({', '.join(p(v) for v in values)})"


def _write(conn: sqlite3.Connection, rows: Sequence[RowValues], tags: list[tuple[str, str, str, float]]) -> int:
    """Insert the rows and their tags (inside a ``BEGIN IMMEDIATE`` transaction); answer how many rows were
    new."""
    written = conn.executemany(_INSERT_ROW, rows).rowcount
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
