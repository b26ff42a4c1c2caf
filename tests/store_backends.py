"""The three state backends for the store tests, a clock tests can move, and the worker processes.

Redis must answer at 127.0.0.1:6379 (the development and CI machines run it): a test that needs it fails with
a message saying so; it is never skipped. Each test uses its own key prefix in database 9 (spend) or 10 (rate
limits) and deletes only that prefix afterwards. SQLite files live in the test's tmp dir.

This module imports no pytest: worker processes (``multiprocessing`` spawn) import it to reach the stores.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from mux.stores.limits.lease import LeasedRateLimitStore
from mux.stores.limits.memory import MemoryRateLimitStore
from mux.stores.limits.redis import RedisRateLimitStore
from mux.stores.limits.sqlite import SqliteRateLimitStore
from mux.stores.spend import BudgetWindow
from mux.stores.spend.lease import LeasedSpendStore
from mux.stores.spend.memory import MemorySpendStore
from mux.stores.spend.redis import RedisSpendStore
from mux.stores.spend.sqlite import SqliteSpendStore

REDIS = "redis://127.0.0.1:6379"
SPEND_DB = 9
LIMITS_DB = 10
BACKENDS = ["memory", "sqlite", "redis"]
REDIS_NEEDED = (
    "these tests need Redis at 127.0.0.1:6379 (it runs on the development and CI machines; "
    "start it with `redis-server`): they fail, never skip, without it"
)

# Wednesday 2027-03-10 12:00:00 UTC: inside a day, an ISO week and a month, none at a boundary.
T0 = datetime(2027, 3, 10, 12, tzinfo=UTC).timestamp()
DAY_T0_END = int(datetime(2027, 3, 11, tzinfo=UTC).timestamp())  # the midnight after T0


class Clock:
    """A wall clock that moves only when told: ``clock()`` answers epoch seconds."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Backend:
    """One backend for one test: builds unopened stores that share its state (file, prefix)."""

    def __init__(self, kind: str, tmp_dir: str) -> None:
        self.kind = kind
        self.path = os.path.join(tmp_dir, "state.db")
        self.prefix = f"mux-test:{uuid.uuid4().hex}:"

    def spend(self, clock: Any = None, **options: Any) -> Any:
        """A spend store on this backend; ``clock=None`` is the real clock (the server's, for Redis)."""
        if self.kind == "memory":
            return MemorySpendStore(clock=clock or time.time, **options)
        if self.kind == "sqlite":
            return SqliteSpendStore(self.path, clock=clock or time.time, **options)
        return RedisSpendStore(f"{REDIS}/{SPEND_DB}", clock=clock, prefix=self.prefix, **options)

    def limits(self, clock: Any = None) -> Any:
        """A rate-limit store on this backend; ``clock=None`` is the real clock (the server's, for Redis)."""
        if self.kind == "memory":
            return MemoryRateLimitStore(clock=clock or time.time)
        if self.kind == "sqlite":
            return SqliteRateLimitStore(self.path, clock=clock or time.time)
        return RedisRateLimitStore(f"{REDIS}/{LIMITS_DB}", clock=clock, prefix=self.prefix)

    def leased_spend(self, clock: Any = None, **options: Any) -> LeasedSpendStore:
        """A worker's leasing spend store on this (shared) backend, as ``spend_store`` builds it."""
        return LeasedSpendStore(self.spend(clock), clock=clock or time.time, **options)

    def leased_limits(self, clock: Any = None) -> LeasedRateLimitStore:
        """A worker's rate-limit store with allowances on this (shared) backend, as ``limit_store`` builds it."""
        return LeasedRateLimitStore(self.limits(clock))

    def cleanup(self) -> None:
        if self.kind == "redis":
            asyncio.run(wipe(self.prefix))


async def require_redis() -> None:
    """Raise with ``REDIS_NEEDED`` when Redis does not answer."""
    client = Redis.from_url(REDIS, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as e:
        raise RuntimeError(f"{REDIS_NEEDED} ({e})") from None
    finally:
        await client.aclose()


async def wipe(prefix: str) -> None:
    """Delete the keys under ``prefix`` (and only those) in the test databases."""
    for db in (SPEND_DB, LIMITS_DB):
        client = Redis.from_url(f"{REDIS}/{db}")
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


# ---- worker processes (spawned): each opens its own store on the shared file or server -----------------


def spend_worker(
    kind: str,
    tmp_dir: str,
    prefix: str,
    name: str,
    cap: int,
    amount: int,
    attempts: int,
    barrier: Any,
    results: Any,
    leased: bool = False,
) -> None:
    """Open a spend store (``leased``: behind leases), wait for the other worker, fire ``attempts`` reservations
    at once; report admitted."""

    async def main() -> int:
        backend = Backend(kind, tmp_dir)
        backend.prefix = prefix
        store = backend.leased_spend() if leased else backend.spend()
        await store.open()
        try:
            window = BudgetWindow("shared", "key:shared", cap, "day")
            barrier.wait(20)
            answers = await asyncio.gather(
                *(store.reserve(f"{name}-{i}", [window], amount, 60) for i in range(attempts))
            )
            return sum(a.admitted for a in answers)
        finally:
            await store.close()

    results.put(asyncio.run(main()))


def limits_worker(
    kind: str, tmp_dir: str, prefix: str, rpm: int, attempts: int, barrier: Any, results: Any, leased: bool = False
) -> None:
    """Open a rate-limit store (``leased``: with allowances), wait for the other worker, fire ``attempts``
    acquires at once; report admitted."""

    async def main() -> int:
        backend = Backend(kind, tmp_dir)
        backend.prefix = prefix
        store = backend.leased_limits() if leased else backend.limits()
        await store.open()
        try:
            barrier.wait(20)
            answers = await asyncio.gather(*(store.acquire("key:shared", rpm, None, 0) for _ in range(attempts)))
            return sum(a.admitted for a in answers)
        finally:
            await store.close()

    results.put(asyncio.run(main()))


def run_two(target: Any, *args: Any, **kwargs: Any) -> list[int]:
    """Run ``target(*args_for_each, barrier, results, **kwargs)`` in two spawned processes; answer their
    results."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results), kwargs=kwargs) for a in args]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=30) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out
