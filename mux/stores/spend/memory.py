"""The spend store in this process's memory: plain dict work, atomic because no call awaits anything
between reading and writing its counters.

Expired reservations, forgotten requests and counters of long-past periods are dropped lazily by each call,
in time order. A finished request (settled or released) is remembered for ``finished_retain_s`` (60 s), so
its id cannot hold a second reservation meanwhile; then it is forgotten, and a late second settle of it
answers False, as for any unknown id, so settling stays idempotent while memory stays bounded by the requests
of the last minute. A lapsed reservation is remembered for ``retain_s`` (a settle that arrives late still
counts its spend).

**Seeded counters.** Memory loses spend at restart; given a ``seed`` (``seed(scope_key, period_start)``
answering the nano-USD that scope spent since then, e.g. ``mux.ledger.seed.LedgerSeed``), the first
``reserve`` or ``usage`` to touch a counter in this process waits for its seed and starts the counter from it;
every later call is plain dict work again. Calls touching a counter whose seed is under way wait for that one
seed, so no reservation is booked in a counter before its history is; a seed that fails raises (the
``StoreUnavailable`` it raised, say) in every call waiting for it, and the next call tries again.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import time
from collections.abc import Awaitable, Callable, Sequence

from mux.money.periods import window as period_window
from mux.stores.lifecycle import Lifecycle
from mux.stores.spend import DEFAULT_RETAIN_S, Admission, BudgetWindow, Clock, counter_key, decide, plan
from mux.stores.spend import check_reservation as _check

HELD, LAPSED, SETTLED, RELEASED = 0, 1, 2, 3
FINISHED_RETAIN_S = 60.0
Seed = Callable[[str, int], Awaitable[int]]  # (scope key, period start) -> nano-USD spent since


class _Hold:
    __slots__ = ("amount", "expires", "forget_at", "state", "counters", "resets")

    def __init__(
        self, amount: int, expires: float, forget_at: float, counters: list[str], resets: list[int | None]
    ) -> None:
        self.amount = amount
        self.expires = expires
        self.forget_at = forget_at
        self.state = HELD
        self.counters = counters
        self.resets = resets


class MemorySpendStore(Lifecycle):
    """Spend state of one process. Reads and writes only its own dicts; answers as ``SpendStore``."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        retain_s: float = DEFAULT_RETAIN_S,
        finished_retain_s: float = FINISHED_RETAIN_S,
        seed: Seed | None = None,
    ) -> None:
        self._clock = clock
        self._retain = retain_s
        self._finished_retain = min(finished_retain_s, retain_s)
        self._finished: collections.deque[tuple[float, str]] = collections.deque()  # finished holds, by time
        self._seed = seed
        self._seeded: set[str] = set()  # counters started from their seed
        self._seeding: dict[str, asyncio.Future[None]] = {}  # counters whose seed is under way
        self._counters: dict[str, list[int]] = {}  # counter key -> [spent, reserved]
        self._holds: dict[str, _Hold] = {}
        self._expiries: list[tuple[float, str]] = []  # live holds by expiry
        self._forgets: list[tuple[float, str]] = []  # lapsed holds by the time they are forgotten
        self._drops: list[tuple[float, str]] = []  # counters by the time their period is long past

    async def reserve(
        self, request_id: str, windows: Sequence[BudgetWindow], amount_nano: int, ttl_s: float
    ) -> Admission:
        _check(amount_nano, ttl_s, self._retain)
        now = self._clock()
        self._purge(now)
        if not windows:
            return Admission(True, [])
        p = plan(windows, now)
        if self._seed is not None:
            await self._seeded_all(p.counters, p.starts, p.resets)
        if request_id in self._holds:
            raise ValueError(f"request {request_id!r} already holds a reservation")
        values = [tuple(self._counters.get(c, (0, 0))) for c in p.counters]
        answer = decide(windows, p, values, amount_nano)  # type: ignore[arg-type]
        if answer.admitted:
            for c, resets in zip(p.counters, p.resets, strict=False):
                self._counter(c, resets)[1] += amount_nano
            expires = now + ttl_s
            hold = _Hold(amount_nano, expires, expires + self._retain, p.counters, p.resets)
            self._holds[request_id] = hold
            heapq.heappush(self._expiries, (expires, request_id))
        return answer

    async def settle(self, request_id: str, actual_nano: int) -> bool:
        if actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        return self._finish(request_id, actual_nano, SETTLED)

    async def release(self, request_id: str) -> bool:
        return self._finish(request_id, 0, RELEASED)

    def finish_soon(self, request_id: str, actual_nano: int | None) -> None:
        if actual_nano is not None and actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        self._finish(request_id, actual_nano or 0, RELEASED if actual_nano is None else SETTLED)

    async def flush(self) -> None:
        return None

    async def usage(self, window: BudgetWindow) -> tuple[int, int]:
        now = self._clock()
        self._purge(now)
        start, resets = period_window(window.period, now)
        key = counter_key(window.scope_key, window.period, start)
        if self._seed is not None:
            await self._seeded_all([key], [start], [resets])
        spent, reserved = self._counters.get(key, (0, 0))
        return spent, reserved

    async def add_spend(self, window: BudgetWindow, nano: int, at: float | None = None) -> None:
        start, resets = period_window(window.period, self._clock() if at is None else at)
        self._counter(counter_key(window.scope_key, window.period, start), resets)[0] += nano

    async def _seeded_all(self, counters: list[str], starts: list[int], resets: list[int | None]) -> None:
        """Return once every counter of ``counters`` (periods starting at ``starts``, ending at ``resets``)
        holds its seed; raise what a failed seed raised."""
        waits = []
        for c, start, reset in zip(counters, starts, resets, strict=False):
            if c in self._seeded:
                continue
            pending = self._seeding.get(c)
            if pending is None:
                pending = self._seeding[c] = asyncio.ensure_future(self._seed_counter(c, start, reset))
            waits.append(asyncio.shield(pending))  # a cancelled request does not cancel a seed others await
        if waits:
            await asyncio.gather(*waits)

    async def _seed_counter(self, c: str, start: int, resets: int | None) -> None:
        assert self._seed is not None
        try:
            spent = await self._seed(c.rsplit("|", 2)[0], start)
            self._counter(c, resets)[0] += spent
            self._seeded.add(c)
        finally:
            del self._seeding[c]

    def _finish(self, request_id: str, actual: int, state: int) -> bool:
        now = self._clock()
        self._purge(now)
        hold = self._holds.get(request_id)
        if hold is None or hold.state >= SETTLED:
            return False
        for c, resets in zip(hold.counters, hold.resets, strict=False):
            counter = self._counter(c, resets)
            if hold.state == HELD:
                counter[1] -= hold.amount
            counter[0] += actual
        hold.state = state
        self._finished.append((now + self._finished_retain, request_id))
        return True

    def _counter(self, key: str, resets: int | None) -> list[int]:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = [0, 0]
            if resets is not None:
                heapq.heappush(self._drops, (resets + self._retain, key))
        return counter

    def _purge(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires, rid = heapq.heappop(expiries)
            hold = self._holds.get(rid)
            if hold is not None and hold.state == HELD and hold.expires == expires:
                for c in hold.counters:
                    counter = self._counters.get(c)
                    if counter is not None:
                        counter[1] -= hold.amount
                hold.state = LAPSED
                heapq.heappush(self._forgets, (hold.forget_at, rid))
        finished = self._finished
        while finished and finished[0][0] <= now:
            rid = finished.popleft()[1]
            hold = self._holds.get(rid)
            if hold is not None and hold.state >= SETTLED:
                del self._holds[rid]
        forgets = self._forgets
        while forgets and forgets[0][0] <= now:
            forget_at, rid = heapq.heappop(forgets)
            hold = self._holds.get(rid)
            if hold is not None and hold.forget_at == forget_at:
                del self._holds[rid]
        drops = self._drops
        while drops and drops[0][0] <= now:
            key = heapq.heappop(drops)[1]
            self._counters.pop(key, None)
            self._seeded.discard(key)
