"""Keys in a SQLite file shared by the processes of one machine.

WAL journal (readers never wait for the writer), a 5 s busy timeout, and short ``BEGIN IMMEDIATE`` write
transactions that change a record and bump the revision together. Two tables: ``mux_keys`` (one row per
key, the record as JSON, both hashes indexed) and ``mux_keys_meta`` (the revision).
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, Awaitable, Callable, TypeVar

import aiosqlite
import msgspec

from mux.stores.keys import KeyHashInUse, KeyStoreUnavailable
from mux.keys.model import KeyRecord

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


class SQLiteKeyStore:
    """A ``KeyStore`` in the SQLite file at ``path``; one connection per instance, its calls serialised."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise KeyStoreUnavailable(f"Key store {self.path} cannot be opened: {exc}.") from None
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.executescript(_SCHEMA)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def _run(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        if self._db is None:
            raise RuntimeError("SQLiteKeyStore is not open")
        async with self._lock:  # one connection: a transaction's statements must not interleave with others
            try:
                return await work(self._db)
            except sqlite3.OperationalError as exc:
                raise KeyStoreUnavailable(f"Key store {self.path} failed: {exc}.") from None

    async def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        async def work(db: aiosqlite.Connection) -> Any:
            async with db.execute(sql, args) as cursor:
                return await cursor.fetchone()
        return await self._run(work)

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._one("SELECT record FROM mux_keys WHERE key_hash = ? UNION ALL "
                              "SELECT record FROM mux_keys WHERE previous_hash = ? LIMIT 1", (key_hash, key_hash))
        return _decode(row[0]) if row else None

    async def get(self, name: str) -> KeyRecord | None:
        row = await self._one("SELECT record FROM mux_keys WHERE name = ?", (name,))
        return _decode(row[0]) if row else None

    async def list(self) -> list[KeyRecord]:
        async def work(db: aiosqlite.Connection) -> list[KeyRecord]:
            rows = await db.execute_fetchall("SELECT record FROM mux_keys ORDER BY name")
            return [_decode(row[0]) for row in rows]
        return await self._run(work)

    async def count(self) -> int:
        return (await self._one("SELECT COUNT(*) FROM mux_keys", ()))[0]

    async def revision(self) -> int:
        return (await self._one("SELECT revision FROM mux_keys_meta WHERE id = 1", ()))[0]

    async def put(self, record: KeyRecord) -> int:
        hashes = record.hashes() * 2 if record.previous_hash is None else record.hashes()

        async def work(db: aiosqlite.Connection) -> int:
            return await _write(db, lambda: _put(db, record, hashes))
        return await self._run(work)

    async def delete(self, name: str) -> bool:
        async def work(db: aiosqlite.Connection) -> bool:
            return await _write(db, lambda: _delete(db, name)) > 0
        return await self._run(work)


async def _write(db: aiosqlite.Connection, change: Callable[[], Awaitable[bool]]) -> int:
    """Run ``change`` in a write transaction; bump the revision if it changed something. Answer the new
    revision, or 0 when nothing changed."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        changed = await change()
        revision = 0
        if changed:
            await db.execute("UPDATE mux_keys_meta SET revision = revision + 1 WHERE id = 1")
            rows = await db.execute_fetchall("SELECT revision FROM mux_keys_meta WHERE id = 1")
            revision = next(iter(rows))[0]
        await db.execute("COMMIT")
        return revision
    except BaseException:
        try:
            await db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


async def _put(db: aiosqlite.Connection, record: KeyRecord, hashes: tuple[str, ...]) -> bool:
    async with db.execute("SELECT name FROM mux_keys WHERE name != ? AND (key_hash IN (?, ?) "
                          "OR previous_hash IN (?, ?)) LIMIT 1", (record.name, *hashes, *hashes)) as cursor:
        other = await cursor.fetchone()
    if other is not None:
        raise KeyHashInUse(record.name, other[0])
    await db.execute("INSERT OR REPLACE INTO mux_keys (name, key_hash, previous_hash, record) VALUES (?, ?, ?, ?)",
                     (record.name, record.key_hash, record.previous_hash, _encode(record)))
    return True


async def _delete(db: aiosqlite.Connection, name: str) -> bool:
    cursor = await db.execute("DELETE FROM mux_keys WHERE name = ?", (name,))
    return cursor.rowcount > 0
