"""One SQLite file shared by the workers of one machine: the connection settings and the one-hop transaction.

WAL (readers never wait for the writer), ``synchronous=NORMAL`` (a committed write survives a crash of the
process; the last ones may be lost on power loss), a busy timeout instead of an immediate "database is
locked", and short ``BEGIN IMMEDIATE`` write transactions so two writers never deadlock on a lock upgrade.

A whole transaction runs as one function in aiosqlite's connection thread: one hop from the event loop per
store call, and no other coroutine's statement can interleave with it. ``SqliteBacked`` is a store on one
such file: ``open``, ``close``, ``async with`` and ``_conn()``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Union

import aiosqlite

from mux.stores import StoreUnavailable
from mux.stores.lifecycle import Connected

T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0
# A script of CREATE … IF NOT EXISTS statements, or a function ``fn(conn)`` run in one write transaction.
Schema = Union[str, Callable[[sqlite3.Connection], object]]


async def connect(path: str, schema: Schema, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> aiosqlite.Connection:
    """Open ``path`` (created if absent) with the shared settings and create ``schema`` if missing (a script),
    or run it (a function of the connection, in one ``BEGIN IMMEDIATE`` transaction).

    Several processes may open a fresh file at once: switching it to WAL takes a lock that SQLite answers with
    "database is locked" at once, without waiting out the busy timeout, so preparing the file is tried again
    (a few ms apart) until ``busy_timeout_s`` has passed."""
    try:
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_s)
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open the SQLite state file {path!r}: {e}") from None
    deadline = time.monotonic() + busy_timeout_s
    pause = 0.005
    while True:
        try:
            await _prepare(db, schema, busy_timeout_s)
            return db
        except sqlite3.OperationalError as e:
            if _locked(e) and time.monotonic() + pause < deadline:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            await db.close()
            raise StoreUnavailable(f"cannot prepare the SQLite state file {path!r}: {e}") from None
        except BaseException:
            await db.close()
            raise


async def _prepare(db: aiosqlite.Connection, schema: Schema, busy_timeout_s: float) -> None:
    await db.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = NORMAL")
    if isinstance(schema, str):
        await db.executescript(schema)
    else:
        await _one_hop(db, schema, ())


def _locked(error: sqlite3.OperationalError) -> bool:
    text = str(error)
    return "locked" in text or "busy" in text


async def run(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(conn, *args)`` inside one ``BEGIN IMMEDIATE`` transaction in the connection's thread."""
    try:
        return await _one_hop(db, fn, args)
    except sqlite3.OperationalError as e:
        raise StoreUnavailable(f"SQLite state: {e}") from None


async def fetch(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Answer the rows of one read statement, run in one hop without a write transaction (WAL: it never waits
    for a writer)."""
    try:
        return list(await db.execute_fetchall(sql, params))
    except sqlite3.OperationalError as e:
        raise StoreUnavailable(f"SQLite state: {e}") from None


class SqliteBacked(Connected[aiosqlite.Connection]):
    """A store in the SQLite file ``path``: ``open`` connects as ``connect`` does (creating ``schema``),
    ``close`` closes, ``_conn()`` answers the connection or raises RuntimeError ("<_name> is not open")."""

    _name = "the SQLite store"

    def __init__(self, path: str, schema: Schema, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self._schema = schema
        self._busy = busy_timeout_s

    async def _connect(self) -> aiosqlite.Connection:
        return await connect(self.path, self._schema, busy_timeout_s=self._busy)

    async def _disconnect(self, db: aiosqlite.Connection) -> None:
        await db.close()


def _one_hop(db: aiosqlite.Connection, fn: Callable[..., T], args: tuple) -> Any:
    # aiosqlite has no public call for "run this function in the connection's thread"; _execute is that
    # call (it queues the function, as every public method does) and has kept its signature since 0.11.
    return db._execute(_transaction, db._conn, fn, args)


def _transaction(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (a failed COMMIT, say)
            conn.execute("ROLLBACK")
        raise
    return result
