"""Settles, releases and token corrections queued off the request path (``finish_soon``, ``correct_soon``):
on every backend they land — in the next call's transaction or pipeline, on their own a few ms later, or at
close — exactly once, and a settle queued twice still counts once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mux.stores import StoreUnavailable
from mux.stores.deferred import Deferred
from mux.stores.spend import BudgetWindow
from tests.store_backends import BACKENDS, Backend, require_redis


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "redis":
        asyncio.run(require_redis())
    b = Backend(request.param, str(tmp_path))
    yield b
    b.cleanup()


W = BudgetWindow("acme", "key:acme", 1000, "day")


def test_queued_settles_land_with_the_next_reserve_and_count_once(backend: Backend) -> None:
    async def main() -> None:
        async with backend.spend() as store:
            assert (await store.reserve("r1", [W], 600, 30)).admitted
            store.finish_soon("r1", 100)
            store.finish_soon("r1", 100)  # a second settle of one request does nothing
            a = await store.reserve("r2", [W], 800, 30)  # fits only once r1's 600 became its 100 spent
            assert a.admitted and (a.windows[0].spent_nano, a.windows[0].reserved_nano) == (100, 800)
            store.finish_soon("r2", None)
            assert await store.usage(W) == (100, 0)

    asyncio.run(main())


def test_queued_settles_land_on_their_own_within_ms_and_at_close(backend: Backend) -> None:
    async def main() -> None:
        async with backend.spend() as store:
            await store.reserve("r1", [W], 300, 30)
            store.finish_soon("r1", 250)
            await asyncio.sleep(0.05)
            if backend.kind != "memory":  # memory settles at once: nothing is queued
                assert len(store._later) == 0
            assert await store.usage(W) == (250, 0)
            await store.reserve("r2", [W], 300, 30)
            store.finish_soon("r2", 50)
        async with backend.spend() as again:  # closing wrote the queued settle
            if backend.kind != "memory":
                assert await again.usage(W) == (300, 0)

    asyncio.run(main())


def test_queued_token_corrections_land_before_the_next_acquire(backend: Backend) -> None:
    async def main() -> None:
        async with backend.limits() as store:
            assert (await store.acquire("u1", None, 1000, 900)).admitted
            assert not (await store.acquire("u1", None, 1000, 900)).admitted
            store.correct_soon("u1", 1000, -800)  # the answer used 100 tokens
            decision = await store.acquire("u1", None, 1000, 900)
            assert decision.admitted and decision.tokens.remaining == 0

    asyncio.run(main())


def test_a_batch_that_meets_an_unreachable_store_is_tried_again_then_lands() -> None:
    seen: list[list[int]] = []
    fails = [2]

    async def apply(ops: list[int]) -> None:
        if fails[0]:
            fails[0] -= 1
            raise StoreUnavailable("down")
        seen.append(ops)

    async def main() -> None:
        later: Deferred[int] = Deferred(apply, name="test", delay_s=0.001, retries_s=(0.001, 0.001, 0.001))
        later.add(1)
        later.add(2)
        await asyncio.sleep(0.05)
        later.add(3)
        await later.close()

    asyncio.run(main())
    assert seen == [[1, 2], [3]]


def test_acquire_all_stops_at_the_first_refusal_and_gives_the_earlier_tokens_back(backend: Backend) -> None:
    async def main() -> None:
        async with backend.limits() as store:
            limits = [("user:u1", 10, 1000), ("team:t", None, 500), ("global", 10, None)]
            decisions = await store.acquire_all(limits, 600)  # the team's 500 refuses 600 tokens
            assert [d.admitted for d in decisions] == [True, False]
            await store.flush()
            after = await store.acquire("user:u1", 10, 1000, 1000)  # the user's 600 tokens came back
            assert after.admitted and after.requests.remaining == 8  # its request count stays taken
            assert [d.admitted for d in await store.acquire_all(limits[2:], 0)] == [True]

    asyncio.run(main())
