"""Keys in a SQLite file shared by the processes of one machine.

The file's settings are ``mux.stores.sqlite_file``'s: WAL (readers never wait for the writer), a 5 s busy
timeout, and short ``BEGIN IMMEDIATE`` write transactions that change a record and bump the revision
together, each run whole in the connection's thread. Two tables: ``mux_keys`` (one row per key, the record
as JSON, both hashes indexed) and ``mux_keys_meta`` (the revision).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec

from mux.keys.model import KeyRecord
from mux.stores import StoreUnavailable, sqlite_file
from mux.stores.keys import KeyHashInUse, KeyStoreUnavailable

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mux_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    previous_hash TEXT,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS mux_keys_previous ON mux_keys (previous_hash);
CREATE TABLE IF NOT EXISTS mux_keys_meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL);
INSERT OR IGNORE INTO mux_keys_meta VALUES (1, 0);
"""

_decode = msgspec.json.Decoder(KeyRecord).decode
_encode = msgspec.json.Encoder().encode


class SQLiteKeyStore(sqlite_file.SqliteBacked):
    """A ``KeyStore`` in the SQLite file at ``path``; one connection per instance, each call one hop to its
    thread (so no two calls interleave)."""

    _name = "SQLiteKeyStore"

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        super().__init__(path, _SCHEMA, busy_timeout_s=busy_timeout_ms / 1000)
        self.busy_timeout_ms = busy_timeout_ms

    async def open(self) -> None:
        try:
            await super().open()
        except StoreUnavailable as exc:
            raise KeyStoreUnavailable(f"Key store: {exc}.") from None

    async def _keys(self, call: Awaitable[T]) -> T:
        """Await ``call`` (a ``sqlite_file`` call), reporting a file that does not answer as unavailable."""
        try:
            return await call
        except StoreUnavailable as exc:
            raise KeyStoreUnavailable(f"Key store {self.path} failed: {exc}.") from None

    async def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        rows = await self._keys(sqlite_file.fetch(self._conn(), sql, args))
        return rows[0] if rows else None

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._one(
            "SELECT record FROM mux_keys WHERE key_hash = ? UNION ALL "
            "SELECT record FROM mux_keys WHERE previous_hash = ? LIMIT 1",
            (key_hash, key_hash),
        )
        return _decode(row[0]) if row else None

    async def get(self, name: str) -> KeyRecord | None:
        row = await self._one("SELECT record FROM mux_keys WHERE name = ?", (name,))
        return _decode(row[0]) if row else None

    async def list(self) -> list[KeyRecord]:
        rows = await self._keys(sqlite_file.fetch(self._conn(), "SELECT record FROM mux_keys ORDER BY name"))
        return [_decode(row[0]) for row in rows]

    async def count(self) -> int:
        return (await self._one("SELECT COUNT(*) FROM mux_keys", ()))[0]

    async def revision(self) -> int:
        return (await self._one("SELECT revision FROM mux_keys_meta WHERE id = 1", ()))[0]

    async def put(self, record: KeyRecord) -> int:
        hashes = record.hashes() * 2 if record.previous_hash is None else record.hashes()
        return await self._keys(sqlite_file.run(self._conn(), _put, record, hashes))

    async def delete(self, name: str) -> bool:
        return await self._keys(sqlite_file.run(self._conn(), _delete, name)) > 0


# ---- in the connection's thread, inside BEGIN IMMEDIATE ----


def _put(conn: sqlite3.Connection, record: KeyRecord, hashes: tuple[str, ...]) -> int:
    other = conn.execute(
        "SELECT name FROM mux_keys WHERE name != ? AND (key_hash IN (?, ?) OR previous_hash IN (?, ?)) LIMIT 1",
        (record.name, *hashes, *hashes),
    ).fetchone()
    if other is not None:
        raise KeyHashInUse(record.name, other[0])
    conn.execute(
        "INSERT OR REPLACE INTO mux_keys (name, key_hash, previous_hash, record) VALUES (?, ?, ?, ?)",
        (record.name, record.key_hash, record.previous_hash, _encode(record)),
    )
    return _bump(conn)


def _delete(conn: sqlite3.Connection, name: str) -> int:
    if conn.execute("DELETE FROM mux_keys WHERE name = ?", (name,)).rowcount == 0:
        return 0
    return _bump(conn)


def _bump(conn: sqlite3.Connection) -> int:
    """Grow the revision with the change; answer the new revision."""
    conn.execute("UPDATE mux_keys_meta SET revision = revision + 1 WHERE id = 1")
    return conn.execute("SELECT revision FROM mux_keys_meta WHERE id = 1").fetchone()[0]
