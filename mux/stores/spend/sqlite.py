"""The spend store in one SQLite file: the workers of one machine share it, and spend survives restarts.

Tables: ``mux_spend_counter`` (spent and reserved nano-USD per ``scope|period|start``) and
``mux_spend_request`` (each reservation: amount, expiry, state, the counters it holds). Every call is one
short ``BEGIN IMMEDIATE`` transaction run in aiosqlite's thread (``mux.stores.sqlite_file``); settles and
releases queued by ``finish_soon`` run in the next reserve's or usage's transaction, or in one of their own a
few ms later (``mux.stores.deferred``). Reservations
past their expiry are taken out of the counters by the next reserve or usage call, found through a partial
index that holds only live reservations; spent requests and long-past periods are deleted once a minute.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from mux.money.periods import window as period_window
from mux.stores import sqlite_file
from mux.stores.deferred import Deferred
from mux.stores.spend import (
    DEFAULT_RETAIN_S,
    Admission,
    BudgetWindow,
    Clock,
    LeaseCall,
    check_reservation,
    counter_key,
    decide,
    grant,
    plan,
)

T = TypeVar("T")
HELD, LAPSED, SETTLED, RELEASED = 0, 1, 2, 3
CLEANUP_EVERY_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS mux_spend_counter (
    ckey TEXT PRIMARY KEY,
    spent INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    drop_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mux_spend_counter_drop ON mux_spend_counter(drop_at) WHERE drop_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS mux_spend_request (
    request_id TEXT PRIMARY KEY,
    amount INTEGER NOT NULL,
    expires REAL NOT NULL,
    state INTEGER NOT NULL,
    counters TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mux_spend_request_live ON mux_spend_request(expires) WHERE state = 0;
CREATE INDEX IF NOT EXISTS mux_spend_request_expires ON mux_spend_request(expires);
"""

_ADD = (
    "INSERT INTO mux_spend_counter(ckey, spent, reserved, drop_at) VALUES (?1, ?2, ?3, ?4) "
    "ON CONFLICT(ckey) DO UPDATE SET spent = spent + ?2, reserved = reserved + ?3"
)
_SETTLE = (
    "INSERT INTO mux_spend_counter(ckey, spent, reserved, drop_at) VALUES (?1, ?2, 0, ?3) "
    "ON CONFLICT(ckey) DO UPDATE SET spent = spent + ?2, reserved = reserved - ?4"
)
_READ = "SELECT spent, reserved FROM mux_spend_counter WHERE ckey = ?"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[tuple[str, float | None]]).decode


class SqliteSpendStore(sqlite_file.SqliteBacked):
    """Spend state in the SQLite file ``path``. Answers as ``SpendStore``."""

    _name = "the SQLite spend store"

    def __init__(
        self,
        path: str,
        *,
        clock: Clock = time.time,
        retain_s: float = DEFAULT_RETAIN_S,
        busy_timeout_s: float = sqlite_file.BUSY_TIMEOUT_S,
    ) -> None:
        super().__init__(path, SCHEMA, busy_timeout_s=busy_timeout_s)
        self._clock = clock
        self._retain = retain_s
        self._next_cleanup = 0.0  # touched only in the connection's thread
        self._later: Deferred[tuple[str, int, int]] = Deferred(self._run_later, name=self._name)

    async def close(self) -> None:
        if self._held is not None:
            await self._later.close()
        await super().close()

    async def _run_later(self, ops: list[tuple[str, int, int]]) -> None:
        await sqlite_file.run(self._conn(), self._finish_all, ops, self._clock())

    async def _with_queued(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in one transaction after the queued settles and releases."""
        db = self._conn()
        ops = self._later.take()
        if not ops:
            return await sqlite_file.run(db, fn, *args)
        try:
            return await sqlite_file.run(db, _after, self._finish_all, ops, args[-1], fn, args)
        except Exception:  # the transaction rolled back (a cancelled caller's may still have committed)
            self._later.give_back(ops)
            raise

    def finish_soon(self, request_id: str, actual_nano: int | None) -> None:
        if actual_nano is not None and actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        self._later.add((request_id, actual_nano or 0, RELEASED if actual_nano is None else SETTLED))

    async def flush(self) -> None:
        await self._later.flush()

    async def reserve(
        self, request_id: str, windows: Sequence[BudgetWindow], amount_nano: int, ttl_s: float
    ) -> Admission:
        check_reservation(amount_nano, ttl_s, self._retain)
        self._check_open()
        if not windows:
            return Admission(True, [])
        now = self._clock()
        return await self._with_queued(self._reserve, request_id, windows, amount_nano, now + ttl_s, now)

    async def settle(self, request_id: str, actual_nano: int) -> bool:
        if actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        return await sqlite_file.run(self._conn(), self._finish, request_id, actual_nano, SETTLED, self._clock())

    async def release(self, request_id: str) -> bool:
        return await sqlite_file.run(self._conn(), self._finish, request_id, 0, RELEASED, self._clock())

    async def usage(self, window: BudgetWindow) -> tuple[int, int]:
        now = self._clock()
        start, _ = period_window(window.period, now)
        key = counter_key(window.scope_key, window.period, start)
        return await self._with_queued(self._usage, key, now)

    async def add_spend(self, window: BudgetWindow, nano: int, at: float | None = None) -> None:
        start, resets = period_window(window.period, self._clock() if at is None else at)
        key = counter_key(window.scope_key, window.period, start)
        await sqlite_file.run(self._conn(), _execute, _ADD, (key, nano, 0, self._drop_at(resets)))

    async def lease(self, calls: Sequence[LeaseCall]) -> list[tuple[int, int, int]]:
        """Renew each lease of ``calls`` in one transaction; answer per call ``(granted, spent, reserved)`` of
        its counter afterwards (``mux.stores.spend.lease``)."""
        self._check_open()
        return await self._with_queued(self._lease, calls, self._clock())

    # ---- in the connection's thread, inside BEGIN IMMEDIATE ----

    def _lease(self, conn: sqlite3.Connection, calls: Sequence[LeaseCall], now: float) -> list[tuple[int, int, int]]:
        self._purge(conn, now)
        out = []
        for call in calls:
            row = conn.execute("SELECT amount, state FROM mux_spend_request WHERE request_id = ?", (call.lease_id,))
            found = row.fetchone()
            old = found[0] if found is not None and found[1] == HELD else 0
            drop_at = self._drop_at(call.resets)
            conn.execute(_SETTLE, (call.counter, call.spend, drop_at, old))
            spent, reserved = conn.execute(_READ, (call.counter,)).fetchone()
            granted = grant(call, spent, reserved)
            if granted:
                conn.execute(_ADD, (call.counter, 0, granted, drop_at))
            conn.execute(
                "INSERT OR REPLACE INTO mux_spend_request VALUES (?, ?, ?, ?, ?)",
                (
                    call.lease_id,
                    granted,
                    now + call.ttl_s,
                    HELD if granted else RELEASED,
                    _encode([(call.counter, drop_at)]),
                ),
            )
            out.append((granted, spent, reserved + granted))
        return out

    def _reserve(
        self,
        conn: sqlite3.Connection,
        rid: str,
        windows: Sequence[BudgetWindow],
        amount: int,
        expires: float,
        now: float,
    ) -> Admission:
        self._purge(conn, now)
        if conn.execute("SELECT 1 FROM mux_spend_request WHERE request_id = ?", (rid,)).fetchone():
            raise ValueError(f"request {rid!r} already holds a reservation")
        p = plan(windows, now)
        values = [conn.execute(_READ, (c,)).fetchone() or (0, 0) for c in p.counters]
        answer = decide(windows, p, values, amount)
        if answer.admitted:
            counters = [(c, self._drop_at(r)) for c, r in zip(p.counters, p.resets, strict=False)]
            conn.executemany(_ADD, [(c, 0, amount, d) for c, d in counters])
            conn.execute(
                "INSERT INTO mux_spend_request VALUES (?, ?, ?, ?, ?)", (rid, amount, expires, HELD, _encode(counters))
            )
        return answer

    def _finish(self, conn: sqlite3.Connection, rid: str, actual: int, state: int, now: float) -> bool:
        row = conn.execute(
            "SELECT amount, expires, state, counters FROM mux_spend_request WHERE request_id = ?", (rid,)
        ).fetchone()
        if row is None or row[2] >= SETTLED or row[1] + self._retain <= now:
            return False
        amount, _, held, counters = row
        held_amount = amount if held == HELD else 0
        conn.executemany(_SETTLE, [(c, actual, d, held_amount) for c, d in _decode(counters)])
        conn.execute("UPDATE mux_spend_request SET state = ? WHERE request_id = ?", (state, rid))
        return True

    def _finish_all(self, conn: sqlite3.Connection, ops: list[tuple[str, int, int]], now: float) -> None:
        for rid, actual, state in ops:
            self._finish(conn, rid, actual, state, now)

    def _usage(self, conn: sqlite3.Connection, key: str, now: float) -> tuple[int, int]:
        self._purge(conn, now)
        row = conn.execute(_READ, (key,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        lapsed = conn.execute(
            "SELECT request_id, amount, counters FROM mux_spend_request WHERE state = 0 AND expires <= ?", (now,)
        ).fetchall()
        for rid, amount, counters in lapsed:
            conn.executemany(
                "UPDATE mux_spend_counter SET reserved = reserved - ? WHERE ckey = ?",
                [(amount, c) for c, _ in _decode(counters)],
            )
            conn.execute("UPDATE mux_spend_request SET state = ? WHERE request_id = ?", (LAPSED, rid))
        if now >= self._next_cleanup:
            self._next_cleanup = now + CLEANUP_EVERY_S
            conn.execute("DELETE FROM mux_spend_request WHERE expires <= ? AND state != 0", (now - self._retain,))
            conn.execute("DELETE FROM mux_spend_counter WHERE drop_at <= ?", (now,))

    def _drop_at(self, resets: int | None) -> float | None:
        return None if resets is None else resets + self._retain


def _after(
    conn: sqlite3.Connection, first: Callable[..., Any], ops: list, now: float, fn: Callable[..., T], args: tuple
) -> T:
    first(conn, ops, now)
    return fn(conn, *args)


def _execute(conn: sqlite3.Connection, sql: str, params: tuple) -> None:
    conn.execute(sql, params)
