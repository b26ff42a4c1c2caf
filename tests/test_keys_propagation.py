"""A revoked or rotated key stops working everywhere within the documented bound, while the request path
reads the store only once per key per second: the cache alone on a scripted clock, then two replicas on
the real Redis and two processes on one SQLite file, measured."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from mux.errors import MuxError
from mux.keys.cache import KeyCache
from mux.keys.decide import key_from_headers
from mux.keys.hashing import hash_key, new_key
from mux.keys.model import rotated
from mux.keys.spec import KeySpec, record_from_spec
from mux.stores.keys import KeyStoreUnavailable
from mux.stores.keys.memory import MemoryKeyStore
from tests.keys_stores import drop_prefix, opened, unique_prefix
from tests.servers import run

SECRET = "server-secret"
BOUND_S = 1.0  # the documented hard bound (ttl_s); the usual one is check_every_s (0.25 s) + one read


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting(MemoryKeyStore):
    """A memory store counting its reads, whose reads can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = {"by_hash": 0, "revision": 0, "count": 0}
        self.down = False

    async def _read(self, what: str) -> None:
        await asyncio.sleep(0)  # a real store yields while it reads
        if self.down:
            raise KeyStoreUnavailable("down")
        self.reads[what] += 1

    async def by_hash(self, key_hash):
        await self._read("by_hash")
        return await super().by_hash(key_hash)

    async def revision(self):
        await self._read("revision")
        return await super().revision()

    async def count(self):
        await self._read("count")
        return await super().count()


async def with_key(store, name: str = "acme", **fields):
    record, raw = record_from_spec(KeySpec(name=name, **fields), secret=SECRET, now=time.time())
    await store.put(record)
    return record, raw


async def refused(cache: KeyCache, raw: str) -> MuxError | None:
    try:
        await cache.authenticate(raw)
    except MuxError as exc:
        return exc
    return None


def test_lookups_are_served_from_the_cache_and_the_revision_is_read_at_most_every_250ms():
    async def scenario():
        store, clock = Counting(), Clock()
        _, raw = await with_key(store)
        cache = KeyCache(store, secret=SECRET, clock=clock)
        for _ in range(100):
            assert (await cache.authenticate(raw)).name == "acme"
        assert store.reads == {"by_hash": 1, "revision": 1, "count": 0}
        clock.now += 0.25
        for _ in range(100):
            await cache.authenticate(raw)
        assert store.reads == {"by_hash": 1, "revision": 2, "count": 0}
        clock.now += 1.0  # past the entry's ttl: read again, once
        for _ in range(100):
            await cache.authenticate(raw)
        assert store.reads == {"by_hash": 2, "revision": 3, "count": 0}

    run(scenario())


def test_concurrent_requests_share_one_revision_read():
    async def scenario():
        store, clock = Counting(), Clock()
        _, raw = await with_key(store)
        cache = KeyCache(store, secret=SECRET, clock=clock)
        await cache.authenticate(raw)
        clock.now += 0.3
        records = await asyncio.gather(*(cache.authenticate(raw) for _ in range(50)))
        assert {r.name for r in records} == {"acme"}
        assert store.reads["revision"] == 2 and store.reads["by_hash"] == 1

    run(scenario())


def test_requests_waiting_for_a_revision_read_all_resume_together():
    """A revision read that is due holds every request that finds it so; they must all go on when it answers,
    in one turn of the event loop, not one turn each (a convoy that held requests for hundreds of ms under
    load)."""

    async def scenario():
        store, clock = Counting(), Clock()
        _, raw = await with_key(store)
        cache = KeyCache(store, secret=SECRET, clock=clock)
        await cache.authenticate(raw)
        loop = asyncio.get_running_loop()
        turns = [0]

        def tick() -> None:
            turns[0] += 1
            loop.call_soon(tick)

        loop.call_soon(tick)
        clock.now += 0.3

        async def one() -> int:
            await cache.authenticate(raw)
            return turns[0]

        resumed = await asyncio.gather(*(one() for _ in range(50)))
        assert store.reads["revision"] == 2
        assert max(resumed) - min(resumed) <= 1, resumed

    run(scenario())


def test_a_revocation_elsewhere_is_seen_at_the_next_revision_read_and_not_before():
    async def scenario():
        store, clock = Counting(), Clock()
        _, raw = await with_key(store)
        here = KeyCache(store, secret=SECRET, clock=clock)
        await here.authenticate(raw)
        await store.delete("acme")  # another worker's admin call
        clock.now += 0.24
        assert await refused(here, raw) is None  # within the bound, still cached
        clock.now += 0.01
        error = await refused(here, raw)
        assert error.status == 401 and error.code == "invalid_api_key"

    run(scenario())


def test_a_read_that_straddles_a_revocation_is_not_cached():
    class Slow(Counting):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def by_hash(self, key_hash):
            found = await super().by_hash(key_hash)  # read before the revocation...
            await self.release.wait()  # ...answered after it
            return found

    async def scenario():
        store, clock = Slow(), Clock()
        _, raw = await with_key(store)
        cache = KeyCache(store, secret=SECRET, clock=clock)
        await cache.any_keys()
        pending = asyncio.create_task(cache.authenticate(raw))
        await asyncio.sleep(0.01)
        await store.delete("acme")
        clock.now += 0.25
        await cache.any_keys()  # reads the new revision while the lookup is in flight
        store.release.set()
        assert (await pending).name == "acme"  # started before the revocation
        assert (await refused(cache, raw)).status == 401

    run(scenario())


def test_clear_makes_this_processes_own_write_visible_at_once():
    async def scenario():
        store, clock = Counting(), Clock()
        record, raw = await with_key(store)
        cache = KeyCache(store, secret=SECRET, clock=clock)
        await cache.authenticate(raw)
        await store.put(msgspec.structs.replace(record, disabled=True))
        assert await refused(cache, raw) is None
        cache.clear()
        assert (await refused(cache, raw)).status == 403

    run(scenario())


def test_unknown_keys_are_cached_too_and_a_new_key_works_after_the_revision_moves():
    async def scenario():
        store, clock = Counting(), Clock()
        cache = KeyCache(store, secret=SECRET, clock=clock)
        raw = new_key()
        for _ in range(10):
            assert (await refused(cache, raw)).status == 401
        assert store.reads["by_hash"] == 1
        await store.put(record_from_spec(KeySpec(name="late", key=raw), secret=SECRET, now=0)[0])
        clock.now += 0.25
        assert (await cache.authenticate(raw)).name == "late"

    run(scenario())


def test_when_the_revision_cannot_be_read_entries_last_only_their_ttl_then_requests_fail_closed():
    async def scenario():
        store, clock = Counting(), Clock()
        _, raw = await with_key(store)
        cache = KeyCache(store, secret=SECRET, clock=clock)
        await cache.authenticate(raw)
        store.down = True
        clock.now += 0.5
        assert (await cache.authenticate(raw)).name == "acme"  # fetched 0.5 s ago: within ttl
        clock.now += 0.5
        with pytest.raises(KeyStoreUnavailable) as info:
            await cache.authenticate(raw)
        assert info.value.status == 503
        store.down = False
        clock.now += 0.25
        assert (await cache.authenticate(raw)).name == "acme"

    run(scenario())


def test_any_keys_is_cached_and_follows_the_revision():
    async def scenario():
        store, clock = Counting(), Clock()
        cache = KeyCache(store, secret=SECRET, clock=clock)
        assert await cache.any_keys() is False
        assert await cache.any_keys() is False
        assert store.reads["count"] == 1
        await with_key(store)
        clock.now += 0.25
        assert await cache.any_keys() is True

    run(scenario())


def test_a_missing_or_wrong_key_never_appears_in_the_error():
    async def scenario():
        store = Counting()
        await with_key(store)
        cache = KeyCache(store, secret=SECRET)
        missing = await refused(cache, key_from_headers([]))
        assert missing.status == 401 and b"x-api-key" in missing.body()
        wrong = "mux-wrong-0123456789abcdefghijkl"
        error = await refused(cache, wrong)
        for secret in (wrong, hash_key(wrong, SECRET), hash_key(wrong)):
            assert secret.encode() not in error.body() and secret not in error.message

    run(scenario())


async def until_refused(cache: KeyCache, raw: str, started: float, limit_s: float = 3.0) -> tuple[float, MuxError]:
    """Poll every 5 ms; answer the seconds from ``started`` until ``raw`` was refused, and the error."""
    while True:
        error = await refused(cache, raw)
        if error is not None:
            return time.monotonic() - started, error
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"still accepted {limit_s} s after the change")
        await asyncio.sleep(0.005)


def test_a_key_revoked_on_one_replica_is_refused_by_another_within_1s_on_redis(tmp_path):
    async def scenario():
        prefix = unique_prefix()
        try:
            async with opened("redis", tmp_path, prefix) as a_store, opened("redis", tmp_path, prefix) as b_store:
                a = KeyCache(a_store, secret=SECRET)
                b = KeyCache(b_store, secret=SECRET)
                b_slow = KeyCache(b_store, secret=SECRET, ttl_s=60)  # only the revision read can refuse here
                _, raw = await with_key(a_store)
                for cache in (b, b_slow):
                    assert (await cache.authenticate(raw)).name == "acme"  # cached on B
                await asyncio.sleep(0.3)
                for cache in (b, b_slow):
                    assert (await cache.authenticate(raw)).name == "acme"
                started = time.monotonic()
                assert await a_store.delete("acme")
                a.clear()
                assert (await refused(a, raw)).status == 401  # at once on A
                for cache in (b, b_slow):
                    elapsed, error = await until_refused(cache, raw, started)
                    assert error.status == 401 and error.code == "invalid_api_key"
                    assert elapsed < BOUND_S, f"B accepted a revoked key for {elapsed:.3f} s"
        finally:
            await drop_prefix(prefix)

    run(scenario())


def test_a_key_rotated_without_grace_on_one_replica_is_refused_by_another_within_1s_on_redis(tmp_path):
    async def scenario():
        prefix = unique_prefix()
        try:
            async with opened("redis", tmp_path, prefix) as a_store, opened("redis", tmp_path, prefix) as b_store:
                b = KeyCache(b_store, secret=SECRET, ttl_s=60)
                record, old = await with_key(a_store)
                await b.authenticate(old)
                new = new_key()
                started = time.monotonic()
                await a_store.put(rotated(record, hash_key(new, SECRET), now=time.time()))
                elapsed, error = await until_refused(b, old, started)
                assert error.status == 401 and "rotated" in error.message
                assert elapsed < BOUND_S, f"B accepted a rotated-out key for {elapsed:.3f} s"
                assert (await b.authenticate(new)).name == "acme"
        finally:
            await drop_prefix(prefix)

    run(scenario())


# A second process: authenticate the key until it is refused; print when (epoch seconds) and the status.
WORKER = """
import asyncio, sys, time
from mux.keys.cache import KeyCache
from mux.errors import MuxError
from mux.stores.keys.sqlite import SQLiteKeyStore

async def main(path, raw):
    store = SQLiteKeyStore(path)
    await store.open()
    cache = KeyCache(store, secret=sys.argv[3], ttl_s=60)  # only the revision read can refuse
    await cache.authenticate(raw)
    print("ready", flush=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            await cache.authenticate(raw)
        except MuxError as exc:
            print(time.time(), exc.status, flush=True)
            break
        await asyncio.sleep(0.005)
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_key_revoked_by_one_process_is_refused_by_another_on_the_same_sqlite_file_within_1s(tmp_path):
    path = str(tmp_path / "keys.db")

    async def setup() -> str:
        async with opened("sqlite", tmp_path) as store:
            return (await with_key(store))[1]

    raw = run(setup())
    root = Path(__file__).resolve().parent.parent
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, path, raw, SECRET],
        cwd=root,
        text=True,
        stdout=subprocess.PIPE,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # the worker has served from its cache past a revision read

        async def revoke() -> float:
            async with opened("sqlite", tmp_path) as store:
                started = time.time()
                assert await store.delete("acme")
                return started

        started = run(revoke())
        refused_at, status = worker.stdout.readline().split()
        elapsed = float(refused_at) - started
        assert status == "401"
        assert elapsed < BOUND_S, f"the other process accepted a revoked key for {elapsed:.3f} s"
    finally:
        worker.kill()
        worker.wait()


def test_the_cached_answer_without_io_keeps_every_bound_of_the_lookup():
    async def scenario():
        store, clock = Counting(), Clock()
        _, raw = await with_key(store)
        disabled, other = await with_key(store, "off", disabled=True)
        cache = KeyCache(store, secret=SECRET, clock=clock)
        assert cache.authenticated(raw) is None  # nothing cached yet: ask authenticate
        await cache.authenticate(raw)
        assert await refused(cache, other) is not None
        assert cache.authenticated(raw).name == "acme"
        assert cache.authenticated(other) is None  # cached, but it may not pass
        assert cache.authenticated(None) is None and cache.authenticated(new_key()) is None
        clock.now += 0.25  # the revision is due: only authenticate may read it
        assert cache.authenticated(raw) is None
        await cache.authenticate(raw)
        assert cache.authenticated(raw).name == "acme"
        cache.clear()  # this process's own write
        assert cache.authenticated(raw) is None
        await cache.authenticate(raw)
        clock.now += 0.2
        await cache.authenticate(raw)  # reads the revision, not the entry
        clock.now += 0.85  # the entry is past ttl_s though the revision is fresh
        await cache._sync()
        assert cache.authenticated(raw) is None

    run(scenario())
