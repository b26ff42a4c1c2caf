"""The rate-limit store, the same behaviour on each backend: memory, SQLite (a tmp file) and Redis (127.0.0.1:6379,
db 10, a prefix per test). Redis must be running: these tests fail without it, they are not skipped.

Time is a movable clock for every backend (the Redis script then takes it instead of the server's); a few
tests use the real clock to prove the server-time path.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mux.stores.limits import RateDecision, limit_store
from mux.stores.state_url import parse_state_url
from tests.store_backends import BACKENDS, Backend, Clock, limits_worker, require_redis, run_two, wipe


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "redis":
        asyncio.run(require_redis())
    b = Backend(request.param, str(tmp_path))
    yield b
    b.cleanup()


def run(store: Any, body: Callable[[Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with store:
            return await body(store)

    return asyncio.run(main())


def test_n_requests_per_minute_admit_n_then_say_when_to_retry(backend: Backend) -> None:
    async def body(store: Any) -> None:
        answers = [await store.acquire("key:acme", 6, None, 0) for _ in range(7)]
        assert [a.admitted for a in answers] == [True] * 6 + [False]
        assert [a.requests.remaining for a in answers] == [5, 4, 3, 2, 1, 0, 0]
        first, last = answers[0].requests, answers[-1].requests
        assert (first.limit, first.reset_s, first.retry_after_s) == (6, 10.0, 0.0)
        assert (last.limit, last.reset_s, last.retry_after_s, last.admitted) == (6, 60.0, 10.0, False)
        assert answers[-1].retry_after_s == 10.0 and answers[-1].tokens is None

    run(backend.limits(Clock()), body)


def test_the_limit_refills_evenly_not_all_at_once(backend: Backend) -> None:
    clock = Clock()

    async def body(store: Any) -> None:
        for _ in range(6):
            assert (await store.acquire("key:acme", 6, None, 0)).admitted
        clock.advance(9.999)
        assert not (await store.acquire("key:acme", 6, None, 0)).admitted
        clock.advance(0.001)
        assert (await store.acquire("key:acme", 6, None, 0)).admitted  # one per 10 s
        assert not (await store.acquire("key:acme", 6, None, 0)).admitted
        clock.advance(60)
        answers = [await store.acquire("key:acme", 6, None, 0) for _ in range(7)]
        assert sum(a.admitted for a in answers) == 6

    run(backend.limits(clock), body)


def test_a_minute_boundary_admits_no_second_burst(backend: Backend) -> None:
    clock = Clock(Clock().t // 60 * 60 + 59.9)  # 0.1 s before a minute turns

    async def body(store: Any) -> None:
        assert sum([(await store.acquire("key:acme", 10, None, 0)).admitted for _ in range(15)]) == 10
        clock.advance(0.2)  # a fixed window would start afresh here
        assert sum([(await store.acquire("key:acme", 10, None, 0)).admitted for _ in range(15)]) == 0

    run(backend.limits(clock), body)


def test_both_limits_take_only_when_both_fit(backend: Backend) -> None:
    async def body(store: Any) -> None:
        a = await store.acquire("user:u1", 10, 1000, 600)
        assert a.admitted and (a.requests.remaining, a.tokens.remaining) == (9, 400)
        assert (a.tokens.limit, a.tokens.reset_s) == (1000, 36.0)
        refused = await store.acquire("user:u1", 10, 1000, 600)
        assert not refused.admitted
        assert refused.requests.admitted and refused.requests.remaining == 9  # the request was not taken
        assert not refused.tokens.admitted and refused.tokens.retry_after_s == pytest.approx(12.0)
        assert refused.retry_after_s == pytest.approx(12.0)
        assert (await store.acquire("user:u1", 10, 1000, 400)).admitted  # exactly what remains

    run(backend.limits(Clock()), body)


def test_a_request_larger_than_the_token_limit_never_fits(backend: Backend) -> None:
    async def body(store: Any) -> None:
        a = await store.acquire("user:u1", 10, 1000, 1001)
        assert not a.admitted and a.tokens.retry_after_s == math.inf and a.retry_after_s == math.inf
        assert a.requests.remaining == 10

    run(backend.limits(Clock()), body)


def test_a_correction_refunds_an_overestimate_and_charges_an_underestimate(backend: Backend) -> None:
    async def body(store: Any) -> None:
        assert (await store.acquire("user:u1", None, 1000, 900)).admitted
        await store.correct("user:u1", 1000, -800)  # the answer used 100 tokens
        assert (await store.acquire("user:u1", None, 1000, 900)).admitted
        await store.correct("user:u1", 1000, 500)  # this one used 1400: 500 tokens over the limit
        a = await store.acquire("user:u2", None, 1000, 0)
        assert a.admitted  # another scope is untouched
        a = await store.acquire("user:u1", None, 1000, 0)
        assert not a.admitted and a.tokens.remaining == 0
        assert a.tokens.retry_after_s == pytest.approx(30.0)  # 500 tokens at 1000 per minute
        await store.correct("user:u1", None, 10**6)  # no token limit: nothing to correct

    run(backend.limits(Clock()), body)


def test_no_limit_admits_without_touching_the_state(backend: Backend) -> None:
    async def body(store: Any) -> None:
        assert await store.acquire("user:u1", None, None, 10**9) == RateDecision(True)
        with pytest.raises(ValueError):
            await store.acquire("user:u1", 0, None, 1)
        with pytest.raises(ValueError):
            await store.acquire("user:u1", None, 10, -1)

    run(backend.limits(Clock()), body)


def test_fifty_concurrent_requests_admit_exactly_the_limit(backend: Backend) -> None:
    async def body(store: Any) -> None:
        answers = await asyncio.gather(*(store.acquire("key:acme", 10, 10_000, 100) for _ in range(50)))
        assert sum(a.admitted for a in answers) == 10

    run(backend.limits(), body)  # the real clock: the server's for Redis


def test_the_real_clock_refills_the_limit(backend: Backend) -> None:
    async def body(store: Any) -> None:
        assert (await store.acquire("key:acme", None, 6000, 6000)).admitted  # the whole minute's tokens at once
        a = await store.acquire("key:acme", None, 6000, 10)
        assert not a.admitted and 0.09 < a.retry_after_s <= 0.1  # 10 tokens at 100 per second
        await asyncio.sleep(a.retry_after_s + 0.01)
        assert (await store.acquire("key:acme", None, 6000, 10)).admitted

    run(backend.limits(), body)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_two_processes_sharing_the_state_admit_n_not_2n(kind: str, tmp_path: Any) -> None:
    if kind == "redis":
        asyncio.run(require_redis())
    b = Backend(kind, str(tmp_path))
    try:
        admitted = run_two(limits_worker, *[(kind, str(tmp_path), b.prefix, 20, 20)] * 2)
        assert sum(admitted) == 20, admitted
    finally:
        b.cleanup()


def test_the_factory_builds_each_backend_from_the_state_url(tmp_path: Any) -> None:
    asyncio.run(require_redis())
    prefix = f"mux-test:factory:{time.time_ns()}:"
    for url in ("memory", f"sqlite:///{tmp_path}/f.db", "redis://127.0.0.1:6379/10"):
        store = limit_store(parse_state_url(url), prefix=prefix)
        answers = run(store, lambda s: asyncio.gather(*(s.acquire("k", 2, None, 0) for _ in range(3))))
        assert [a.admitted for a in answers].count(True) == 2, url
    asyncio.run(wipe(prefix))


def test_the_redis_script_answers_exactly_as_the_python_gcra(tmp_path: Any) -> None:
    """A seeded random sequence of acquires and corrections on several scopes, on every backend side by side
    with one clock: every decision is equal (the Lua script is the same integer arithmetic)."""
    asyncio.run(require_redis())
    backends = [Backend(kind, str(tmp_path)) for kind in BACKENDS]
    clock = Clock()
    rng = random.Random(1203)
    scopes = [("key:a", 5, 1000), ("key:b", None, 7), ("key:c", 3, None), ("key:d", 1000, 200_000)]

    async def main() -> None:
        stores = [b.limits(clock) for b in backends]
        for s in stores:
            await s.open()
        try:
            for step in range(300):
                scope, rpm, tpm = rng.choice(scopes)
                op = rng.random()
                if op < 0.7:
                    tokens = rng.choice([0, 1, 3, 150, 999, 1000, 1001, 50_000])
                    answers: list[Any] = [await s.acquire(scope, rpm, tpm, tokens) for s in stores]
                elif op < 0.85:
                    delta = rng.choice([-500, -3, 2, 400, 10_000])
                    answers = [await s.correct(scope, tpm, delta) for s in stores]
                else:
                    clock.advance(rng.choice([0.001, 0.25, 1, 7.5, 30, 61]))
                    answers = [None] * 3
                assert answers[1:] == answers[:-1], (step, answers)
        finally:
            for s in stores:
                await s.close()

    try:
        asyncio.run(main())
    finally:
        backends[2].cleanup()
