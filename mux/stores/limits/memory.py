"""The rate-limit store in this process's memory: plain dict work, atomic because no call awaits anything.

Buckets that have drained are dropped by a sweep at most once a minute.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from mux.money import gcra
from mux.stores.lifecycle import Lifecycle
from mux.stores.limits import UNLIMITED, Clock, Limit, RateDecision, acquire_each, check, drain_time_us, state_of

SWEEP_EVERY_US = 60_000_000


class MemoryRateLimitStore(Lifecycle):
    """Rate-limit state of one process. Answers as ``RateLimitStore``."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[int, int, int]] = {}  # "r|scope" / "t|scope" -> (level, at_us, empty_us)
        self._next_sweep = 0

    async def acquire(
        self, scope_key: str, rpm: int | None, tpm: int | None, tokens: int, requests: int = 1
    ) -> RateDecision:
        return self._acquire(scope_key, rpm, tpm, tokens, requests)

    async def acquire_all(self, limits: Sequence[Limit], tokens: int) -> list[RateDecision]:
        return acquire_each(self._acquire, self.correct_soon, limits, tokens)

    def _acquire(
        self, scope_key: str, rpm: int | None, tpm: int | None, tokens: int, requests: int = 1
    ) -> RateDecision:
        check(rpm, tpm, tokens)
        if rpm is None and tpm is None:
            return UNLIMITED
        now = int(self._clock() * 1_000_000)
        if now >= self._next_sweep:
            self._sweep(now)
        rk, tk = "r|" + scope_key, "t|" + scope_key
        r_level = self._level(rk, now, rpm) if rpm is not None else 0
        t_level = self._level(tk, now, tpm) if tpm is not None else 0
        admitted, r, t = gcra.decide(r_level, t_level, rpm, tpm, tokens, requests)
        if admitted:
            if r is not None:
                self._buckets[rk] = (r.level, now, now + drain_time_us(r.level, rpm))  # type: ignore[arg-type]
            if t is not None:
                self._buckets[tk] = (t.level, now, now + drain_time_us(t.level, tpm))  # type: ignore[arg-type]
        return RateDecision(admitted, state_of(rpm, r), state_of(tpm, t))

    async def correct(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        self.correct_soon(scope_key, tpm, token_delta)

    async def flush(self) -> None:
        return None

    def correct_soon(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        if tpm is None or token_delta == 0:
            return
        check(None, tpm, 0)
        self._adjust("t|" + scope_key, tpm, token_delta)

    def give_back_soon(self, scope_key: str, rpm: int | None, tpm: int | None, requests: int, tokens: int) -> None:
        if rpm is not None and requests:
            self._adjust("r|" + scope_key, rpm, -requests)
        if tpm is not None and tokens:
            self._adjust("t|" + scope_key, tpm, -tokens)

    def _adjust(self, key: str, limit: int, delta: int) -> None:
        now = int(self._clock() * 1_000_000)
        level = gcra.adjust(self._level(key, now, limit), delta)
        self._buckets[key] = (level, now, now + drain_time_us(level, limit))

    def _level(self, key: str, now: int, limit: int) -> int:
        b = self._buckets.get(key)
        return 0 if b is None else gcra.level_now(b[0], b[1], now, limit)

    def _sweep(self, now: int) -> None:
        self._next_sweep = now + SWEEP_EVERY_US
        gone = [k for k, b in self._buckets.items() if b[2] <= now]
        for k in gone:
            del self._buckets[k]
