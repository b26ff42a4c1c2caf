"""The rate-limit store in one SQLite file: the workers of one machine share every limit.

Table ``mux_rate``: one row per bucket (``r|scope`` for requests, ``t|scope`` for tokens) with its GCRA level
and the µs time it was written. Each call is one short ``BEGIN IMMEDIATE`` transaction in aiosqlite's thread;
corrections queued by ``correct_soon`` run in the next acquire's transaction, or in one of their own a few ms
later (``mux.stores.deferred``); drained buckets are deleted at most every five minutes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from mux.money import gcra
from mux.stores import sqlite_file
from mux.stores.deferred import Deferred
from mux.stores.limits import UNLIMITED, Clock, Limit, RateDecision, check, drain_time_us, state_of

SWEEP_EVERY_US = 300_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS mux_rate (
    k TEXT PRIMARY KEY,
    level INTEGER NOT NULL,
    at INTEGER NOT NULL,
    empty_at INTEGER NOT NULL
) WITHOUT ROWID;
"""
_READ = "SELECT level, at FROM mux_rate WHERE k = ?"
_WRITE = "INSERT OR REPLACE INTO mux_rate(k, level, at, empty_at) VALUES (?, ?, ?, ?)"


class SqliteRateLimitStore(sqlite_file.SqliteBacked):
    """Rate-limit state in the SQLite file ``path``. Answers as ``RateLimitStore``."""

    _name = "the SQLite rate-limit store"

    def __init__(
        self, path: str, *, clock: Clock = time.time, busy_timeout_s: float = sqlite_file.BUSY_TIMEOUT_S
    ) -> None:
        super().__init__(path, SCHEMA, busy_timeout_s=busy_timeout_s)
        self._clock = clock
        self._next_sweep = 0  # touched only in the connection's thread
        self._later: Deferred[tuple[str, int, int, int]] = Deferred(self._run_later, name=self._name)

    async def close(self) -> None:
        if self._held is not None:
            await self._later.close()
        await super().close()

    async def _run_later(self, ops: list[tuple[str, int, int, int]]) -> None:
        await sqlite_file.run(self._conn(), self._correct_all, ops)

    def correct_soon(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        if tpm is None or token_delta == 0:
            return
        check(None, tpm, 0)
        self._later.add(("t|" + scope_key, tpm, token_delta, int(self._clock() * 1_000_000)))

    async def flush(self) -> None:
        await self._later.flush()

    def give_back_soon(self, scope_key: str, rpm: int | None, tpm: int | None, requests: int, tokens: int) -> None:
        now = int(self._clock() * 1_000_000)
        if rpm is not None and requests:
            self._later.add(("r|" + scope_key, rpm, -requests, now))
        if tpm is not None and tokens:
            self._later.add(("t|" + scope_key, tpm, -tokens, now))

    async def acquire(
        self, scope_key: str, rpm: int | None, tpm: int | None, tokens: int, requests: int = 1
    ) -> RateDecision:
        check(rpm, tpm, tokens)
        db = self._conn()
        if rpm is None and tpm is None:
            return UNLIMITED
        now = int(self._clock() * 1_000_000)
        ops = self._later.take()
        try:
            return await sqlite_file.run(db, self._acquire, scope_key, rpm, tpm, tokens, now, ops, requests)
        except Exception:  # the transaction rolled back (a cancelled caller's may still have committed)
            self._later.give_back(ops)
            raise

    async def acquire_all(self, limits: Sequence[Limit], tokens: int) -> list[RateDecision]:
        for _, rpm, tpm in limits:
            check(rpm, tpm, tokens)
        db = self._conn()
        now = int(self._clock() * 1_000_000)
        ops = self._later.take()
        try:
            return await sqlite_file.run(db, self._acquire_all, limits, tokens, now, ops)
        except Exception:  # the transaction rolled back (a cancelled caller's may still have committed)
            self._later.give_back(ops)
            raise

    async def correct(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        if tpm is None or token_delta == 0:
            return
        check(None, tpm, 0)
        now = int(self._clock() * 1_000_000)
        await sqlite_file.run(self._conn(), self._correct, "t|" + scope_key, tpm, token_delta, now)

    # ---- in the connection's thread, inside BEGIN IMMEDIATE ----

    def _acquire(
        self,
        conn: sqlite3.Connection,
        scope_key: str,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        now: int,
        ops: list[tuple[str, int, int, int]],
        requests: int = 1,
    ) -> RateDecision:
        self._correct_all(conn, ops)
        self._sweep(conn, now)
        rk, tk = "r|" + scope_key, "t|" + scope_key
        r_level = _level(conn, rk, now, rpm) if rpm is not None else 0
        t_level = _level(conn, tk, now, tpm) if tpm is not None else 0
        admitted, r, t = gcra.decide(r_level, t_level, rpm, tpm, tokens, requests)
        if admitted:
            if r is not None:
                conn.execute(_WRITE, (rk, r.level, now, now + drain_time_us(r.level, rpm)))  # type: ignore[arg-type]
            if t is not None:
                conn.execute(_WRITE, (tk, t.level, now, now + drain_time_us(t.level, tpm)))  # type: ignore[arg-type]
        return RateDecision(admitted, state_of(rpm, r), state_of(tpm, t))

    def _correct(self, conn: sqlite3.Connection, tk: str, tpm: int, delta: int, now: int) -> None:
        level = gcra.adjust(_level(conn, tk, now, tpm), delta)
        conn.execute(_WRITE, (tk, level, now, now + drain_time_us(level, tpm)))

    def _acquire_all(
        self,
        conn: sqlite3.Connection,
        limits: Sequence[Limit],
        tokens: int,
        now: int,
        ops: list[tuple[str, int, int, int]],
    ) -> list[RateDecision]:
        self._correct_all(conn, ops)
        out: list[RateDecision] = []
        for scope_key, rpm, tpm in limits:
            decision = (
                UNLIMITED if rpm is None and tpm is None else self._acquire(conn, scope_key, rpm, tpm, tokens, now, [])
            )
            out.append(decision)
            if not decision.admitted:
                for key, _, earlier_tpm in limits[: len(out) - 1]:
                    if earlier_tpm is not None and tokens:
                        self._correct(conn, "t|" + key, earlier_tpm, -tokens, now)
                break
        return out

    def _correct_all(self, conn: sqlite3.Connection, ops: list[tuple[str, int, int, int]]) -> None:
        for tk, tpm, delta, at in ops:
            self._correct(conn, tk, tpm, delta, at)

    def _sweep(self, conn: sqlite3.Connection, now: int) -> None:
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_US
            conn.execute("DELETE FROM mux_rate WHERE empty_at <= ?", (now,))


def _level(conn: sqlite3.Connection, key: str, now: int, limit: int) -> int:
    row = conn.execute(_READ, (key,)).fetchone()
    return 0 if row is None else gcra.level_now(row[0], row[1], now, limit)
