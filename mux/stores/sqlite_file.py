"""One SQLite file shared by the workers of one machine: the connection settings and the one-hop transaction.

WAL (readers never wait for the writer), ``synchronous=NORMAL`` (a committed write survives a crash of the
process; the last ones may be lost on power loss), a busy timeout instead of an immediate "database is
locked", and short ``BEGIN IMMEDIATE`` write transactions so two writers never deadlock on a lock upgrade.

A whole transaction runs as one function in aiosqlite's connection thread: one hop from the event loop per
store call, and no other coroutine's statement can interleave with it.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, TypeVar

import aiosqlite

from mux.stores import StoreUnavailable

T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0


async def connect(path: str, schema: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> aiosqlite.Connection:
    """Open ``path`` (created if absent) with the shared settings and create ``schema`` if missing."""
    try:
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_s)
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open the SQLite state file {path!r}: {e}") from None
    try:
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.executescript(schema)
    except sqlite3.OperationalError as e:
        await db.close()
        raise StoreUnavailable(f"cannot prepare the SQLite state file {path!r}: {e}") from None
    except BaseException:
        await db.close()
        raise
    return db


async def run(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(conn, *args)`` inside one ``BEGIN IMMEDIATE`` transaction in the connection's thread."""
    try:
        # aiosqlite has no public call for "run this function in the connection's thread"; _execute is that
        # call (it queues the function, as every public method does) and has kept its signature since 0.11.
        return await db._execute(_transaction, db._conn, fn, args)
    except sqlite3.OperationalError as e:
        raise StoreUnavailable(f"SQLite state: {e}") from None


def _transaction(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
