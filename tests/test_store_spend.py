"""The spend store, the same behaviour on each backend: memory, SQLite (a tmp file) and Redis (127.0.0.1:6379,
db 9, a prefix per test). Redis must be running: these tests fail without it, they are not skipped.

Time is a movable clock for every backend (Redis reservations then expire on it too); a few tests use the
real clock to prove the server-time path.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mux.stores import StoreUnavailable
from mux.stores.limits.redis import RedisRateLimitStore
from mux.stores.spend import Admission, BudgetWindow, spend_store
from mux.stores.spend.memory import MemorySpendStore
from mux.stores.spend.redis import RedisSpendStore
from mux.stores.spend.sqlite import SqliteSpendStore
from mux.stores.state_url import parse_state_url
from tests.store_backends import (
    BACKENDS,
    DAY_T0_END,
    Backend,
    Clock,
    require_redis,
    run_two,
    spend_worker,
    wipe,
)

DAY = 86_400


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "redis":
        asyncio.run(require_redis())
    b = Backend(request.param, str(tmp_path))
    yield b
    b.cleanup()


def run(store: Any, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open ``store``, run ``body(store)`` in a fresh event loop, close the store."""

    async def main() -> Any:
        async with store:
            return await body(store)

    return asyncio.run(main())


def key_window(cap: int, period: str = "day", name: str = "acme", scope: str = "key:acme") -> BudgetWindow:
    return BudgetWindow(name, scope, cap, period)


def test_reservation_counts_until_settled_then_the_real_cost_is_spent(backend: Backend) -> None:
    w = key_window(1000)

    async def body(store: Any) -> None:
        a = await store.reserve("r1", [w], 300, 30)
        assert a.admitted and a.refused is None
        assert (a.windows[0].spent_nano, a.windows[0].reserved_nano, a.windows[0].remaining_nano) == (0, 300, 700)
        assert await store.usage(w) == (0, 300)
        assert await store.settle("r1", 120) is True
        assert await store.usage(w) == (120, 0)

    run(backend.spend(Clock()), body)


def test_refusal_names_the_first_window_that_does_not_fit_and_reserves_nothing(backend: Backend) -> None:
    roomy = key_window(10_000, "month", name="monthly")
    tight = BudgetWindow("tenant", "tag:tenant=acme", 500, "day")
    clock = Clock()

    async def body(store: Any) -> None:
        assert (await store.reserve("r1", [roomy, tight], 200, 30)).admitted
        assert await store.settle("r1", 150)
        a = await store.reserve("r2", [roomy, tight], 400, 30)
        assert not a.admitted
        r = a.refused
        assert (r.name, r.scope_key, r.period) == ("tenant", "tag:tenant=acme", "day")
        assert (r.spent_nano, r.reserved_nano, r.cap_nano) == (150, 0, 500)
        day_start = int(clock() // DAY * DAY)
        assert (r.period_start, r.resets_at) == (day_start, day_start + DAY)
        assert a.headroom_nano == 350
        assert await store.usage(roomy) == (150, 0)  # the window that fitted holds nothing either
        assert await store.usage(tight) == (150, 0)
        assert (await store.reserve("r2", [roomy, tight], 350, 30)).admitted  # a refused id holds nothing

    run(backend.spend(clock), body)


def test_fifty_concurrent_reservations_admit_exactly_the_ten_that_fit(backend: Backend) -> None:
    w = key_window(10 * 7_000)

    async def body(store: Any) -> None:
        answers = await asyncio.gather(*(store.reserve(f"r{i}", [w], 7_000, 30) for i in range(50)))
        assert sum(a.admitted for a in answers) == 10
        assert await store.usage(w) == (0, 70_000)

    run(backend.spend(Clock()), body)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_two_processes_sharing_the_state_admit_no_more_than_the_cap(kind: str, tmp_path: Any) -> None:
    if kind == "redis":
        asyncio.run(require_redis())
    b = Backend(kind, str(tmp_path))
    try:
        admitted = run_two(
            spend_worker, *[(kind, str(tmp_path), b.prefix, name, 10 * 1_000, 1_000, 50) for name in ("a", "b")]
        )
        assert sum(admitted) == 10, admitted
        assert run(b.spend(), lambda s: s.usage(BudgetWindow("shared", "key:shared", 0, "day"))) == (0, 10_000)
    finally:
        b.cleanup()


def test_an_expired_reservation_stops_counting(backend: Backend) -> None:
    w = key_window(1000)
    clock = Clock()

    async def body(store: Any) -> None:
        assert (await store.reserve("crashed", [w], 1000, 30)).admitted
        assert not (await store.reserve("next", [w], 1, 30)).admitted
        clock.advance(29)
        assert await store.usage(w) == (0, 1000)
        clock.advance(1.5)
        assert await store.usage(w) == (0, 0)
        assert (await store.reserve("next", [w], 1000, 30)).admitted

    run(backend.spend(clock), body)


def test_an_expired_reservation_stops_counting_on_the_real_clock(backend: Backend) -> None:
    w = key_window(1000)

    async def body(store: Any) -> None:
        assert (await store.reserve("crashed", [w], 1000, 0.05)).admitted
        await asyncio.sleep(0.08)
        assert (await store.reserve("next", [w], 1000, 30)).admitted

    run(backend.spend(), body)


def test_settle_twice_spends_once(backend: Backend) -> None:
    w = key_window(1000)

    async def body(store: Any) -> None:
        await store.reserve("r1", [w], 500, 30)
        assert await store.settle("r1", 400) is True
        assert await store.settle("r1", 400) is False
        assert await store.release("r1") is False
        assert await store.usage(w) == (400, 0)

    run(backend.spend(Clock()), body)


def test_release_drops_the_reservation_once_and_a_later_settle_changes_nothing(backend: Backend) -> None:
    w = key_window(1000)

    async def body(store: Any) -> None:
        await store.reserve("r1", [w], 500, 30)
        assert await store.release("r1") is True
        assert await store.release("r1") is False
        assert await store.settle("r1", 400) is False
        assert await store.usage(w) == (0, 0)
        assert await store.settle("never-reserved", 10) is False
        assert await store.release("never-reserved") is False

    run(backend.spend(Clock()), body)


def test_settle_after_the_reservation_expired_spends_once(backend: Backend) -> None:
    w = key_window(1000)
    clock = Clock()

    async def body(store: Any) -> None:
        await store.reserve("slow", [w], 600, 10)
        clock.advance(11)
        assert (await store.reserve("other", [w], 900, 10)).admitted  # the lapsed hold no longer counts
        assert await store.settle("slow", 250) is True
        assert await store.settle("slow", 250) is False
        assert await store.usage(w) == (250, 900)  # the lapsed hold is not taken out a second time
        assert await store.settle("other", 100) is True
        assert await store.usage(w) == (350, 0)

    run(backend.spend(clock), body)


def test_a_settle_later_than_the_retention_records_nothing(backend: Backend) -> None:
    w = key_window(1000)
    clock = None if backend.kind == "redis" else Clock()  # Redis forgets on its own clock

    async def body(store: Any) -> None:
        await store.reserve("lost", [w], 600, 0.05)
        if clock is None:
            await asyncio.sleep(0.3)
        else:
            clock.advance(0.3)
        assert await store.settle("lost", 100) is False
        assert await store.usage(w) == (0, 0)

    run(backend.spend(clock, retain_s=0.2), body)


def test_settle_books_the_spend_in_the_period_of_the_reservation(backend: Backend) -> None:
    w = key_window(1000)
    clock = Clock(DAY_T0_END - 10)  # ten seconds before midnight UTC

    async def body(store: Any) -> None:
        a = await store.reserve("late", [w], 500, 60)
        assert a.windows[0].resets_at == DAY_T0_END
        clock.advance(20)
        assert await store.settle("late", 300) is True
        assert await store.usage(w) == (0, 0)  # today: nothing
        clock.advance(-20)
        assert await store.usage(w) == (300, 0)  # yesterday: the spend

    run(backend.spend(clock), body)


def test_a_new_period_starts_from_zero_spend(backend: Backend) -> None:
    day, week, month, total = (key_window(1000, p, name=p) for p in ("day", "week", "month", "total"))
    clock = Clock()

    async def body(store: Any) -> None:
        await store.reserve("r1", [day, week, month, total], 400, 30)
        await store.settle("r1", 400)
        clock.advance(DAY)  # Thursday of the same week and month
        assert [await store.usage(w) for w in (day, week, month, total)] == [(0, 0), (400, 0), (400, 0), (400, 0)]
        clock.advance(5 * DAY)  # Tuesday of the next ISO week
        assert [await store.usage(w) for w in (day, week, month, total)] == [(0, 0), (0, 0), (400, 0), (400, 0)]
        clock.advance(30 * DAY)  # April
        assert [await store.usage(w) for w in (day, week, month, total)] == [(0, 0), (0, 0), (0, 0), (400, 0)]
        a = await store.reserve("r2", [total], 601, 30)
        assert not a.admitted and a.refused.resets_at is None

    run(backend.spend(clock), body)


def test_two_budgets_on_one_scope_and_period_share_one_counter(backend: Backend) -> None:
    shorthand = key_window(1000, name="acme")
    named = key_window(500, name="acme-daily")

    async def body(store: Any) -> None:
        a = await store.reserve("r1", [shorthand, named], 300, 30)
        assert a.admitted
        assert [w.reserved_nano for w in a.windows] == [300, 300]  # counted once, seen by both
        a = await store.reserve("r2", [shorthand, named], 300, 30)
        assert not a.admitted and a.refused.name == "acme-daily"
        await store.settle("r1", 300)
        assert await store.usage(shorthand) == await store.usage(named) == (300, 0)

    run(backend.spend(Clock()), body)


def test_a_window_that_does_not_enforce_tracks_spend_but_never_refuses(backend: Backend) -> None:
    warn = BudgetWindow("heads-up", "team:search", 100, "day", enforce=False)
    hard = key_window(10_000)

    async def body(store: Any) -> None:
        a = await store.reserve("r1", [warn, hard], 5_000, 30)
        assert a.admitted
        assert a.windows[0].reserved_nano == 5_000 and a.windows[0].remaining_nano == 0
        assert a.headroom_nano == 5_000  # only enforced windows bound the headroom
        await store.settle("r1", 4_000)
        assert await store.usage(warn) == (4_000, 0)

    run(backend.spend(Clock()), body)


def test_historical_spend_added_in_the_current_period_counts(backend: Backend) -> None:
    w = key_window(1000)
    clock = Clock()

    async def body(store: Any) -> None:
        await store.add_spend(w, 700, at=clock() - 3600)  # earlier today
        await store.add_spend(w, 5_000, at=clock() - DAY)  # yesterday: another period
        await store.add_spend(w, 100)
        assert await store.usage(w) == (800, 0)
        assert not (await store.reserve("r1", [w], 201, 30)).admitted
        assert (await store.reserve("r2", [w], 200, 30)).admitted

    run(backend.spend(clock), body)


def test_a_request_id_cannot_hold_two_reservations(backend: Backend) -> None:
    w = key_window(1000)

    async def body(store: Any) -> None:
        await store.reserve("r1", [w], 10, 30)
        with pytest.raises(ValueError, match="already holds"):
            await store.reserve("r1", [w], 10, 30)
        await store.settle("r1", 10)
        with pytest.raises(ValueError, match="already holds"):
            await store.reserve("r1", [w], 10, 30)
        assert await store.usage(w) == (10, 0)

    run(backend.spend(Clock()), body)


def test_bad_amounts_and_ttls_are_refused(backend: Backend) -> None:
    w = key_window(1000)

    async def body(store: Any) -> None:
        with pytest.raises(ValueError):
            await store.reserve("r1", [w], -1, 30)
        with pytest.raises(ValueError):
            await store.reserve("r1", [w], 1, 0)
        with pytest.raises(ValueError):
            await store.settle("r1", -5)
        assert await store.reserve("r1", [], 10, 30) == Admission(True, [])

    run(backend.spend(Clock()), body)
    with pytest.raises(ValueError, match="period"):
        BudgetWindow("x", "global", 1, "year")


def test_sqlite_spend_survives_a_restart(tmp_path: Any) -> None:
    b = Backend("sqlite", str(tmp_path))
    w = key_window(1000)
    clock = Clock()

    async def first(store: Any) -> None:
        await store.reserve("done", [w], 300, 30)
        await store.settle("done", 250)
        await store.reserve("in-flight", [w], 400, 30)

    async def second(store: Any) -> None:
        assert await store.usage(w) == (250, 400)
        assert await store.settle("in-flight", 100) is True
        assert await store.settle("done", 250) is False
        assert await store.usage(w) == (350, 0)

    run(b.spend(clock), first)
    run(b.spend(clock), second)


def test_the_factory_builds_each_backend_from_the_state_url(tmp_path: Any) -> None:
    asyncio.run(require_redis())
    prefix = f"mux-test:factory:{time.time_ns()}:"
    w = key_window(100)
    for url in ("memory", f"sqlite:///{tmp_path}/f.db", "redis://127.0.0.1:6379/9"):
        store = spend_store(parse_state_url(url), clock=Clock(), prefix=prefix)
        assert run(store, lambda s: s.reserve("r1", [w], 100, 30)).admitted, url
    asyncio.run(wipe(prefix))


def test_every_backend_answers_a_random_history_alike(tmp_path: Any) -> None:
    """A seeded random sequence of reserve / settle / release / usage / clock moves, run on the three backends
    side by side, across a midnight: every answer is equal, and an enforced window's spent + reserved never
    passes its cap by more than the spend settled after its reservation had expired."""
    asyncio.run(require_redis())
    windows = [
        key_window(5_000, "day", "k-day"),
        key_window(12_000, "month", "k-month"),
        BudgetWindow("team", "team:t", 8_000, "week"),
        BudgetWindow("soft", "global", 3_000, "day", False),
    ]
    backends = [Backend(kind, str(tmp_path)) for kind in BACKENDS]
    clock = Clock(DAY_T0_END - 7200)
    rng = random.Random(20270310)

    async def main() -> None:
        stores = [b.spend(clock) for b in backends]
        for s in stores:
            await s.open()
        try:
            live: dict[str, tuple[int, float]] = {}  # request id -> (amount, reserved at)
            late = 0
            for step in range(250):
                op = rng.random()
                if op < 0.45:
                    rid = f"r{step}"
                    ws = rng.sample(windows, rng.randint(1, 3))
                    amount = rng.choice([0, 100, 700, 1_500, 2_500])
                    answers = [await s.reserve(rid, ws, amount, 20) for s in stores]
                    if answers[0].admitted:
                        live[rid] = (amount, clock())
                elif op < 0.7 and live:
                    rid = rng.choice(sorted(live))
                    amount, at = live.pop(rid)
                    actual = rng.randint(0, amount)
                    if clock() - at >= 20:
                        late += actual
                    answers = [await s.settle(rid, actual) for s in stores]
                elif op < 0.8 and live:
                    rid = rng.choice(sorted(live))
                    live.pop(rid)
                    answers = [await s.release(rid) for s in stores]
                elif op < 0.9:
                    clock.advance(rng.choice([1, 5, 15, 600, 3600]))
                    answers = [None] * len(stores)
                else:
                    answers = [await s.usage(w) for s in stores for w in windows]
                    n = len(windows)
                    answers = [tuple(answers[i * n : (i + 1) * n]) for i in range(len(stores))]
                assert answers[1:] == answers[:-1], (step, answers)
                for w in windows:
                    if w.enforce:
                        spent, reserved = await stores[0].usage(w)
                        assert spent + reserved <= w.cap_nano + late, (step, w.name)
        finally:
            for s in stores:
                await s.close()

    try:
        asyncio.run(main())
    finally:
        backends[2].cleanup()


def test_an_unreachable_redis_is_reported_quickly_without_its_password() -> None:
    async def main() -> None:
        for store in (
            RedisSpendStore("redis://:hunter2@127.0.0.1:1/0"),
            RedisRateLimitStore("redis://:hunter2@127.0.0.1:1/0"),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as e:
                await store.open()
            assert time.monotonic() - started < 2.5
            assert "hunter2" not in str(e.value) and "127.0.0.1:1" in str(e.value)

    asyncio.run(main())


def test_a_sqlite_file_locked_past_the_busy_timeout_is_reported(tmp_path: Any) -> None:
    path = str(tmp_path / "locked.db")
    w = key_window(1000)

    async def body(store: Any) -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another worker holding the write lock
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.reserve("r1", [w], 10, 30)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await store.reserve("r1", [w], 10, 30)).admitted  # nothing was left behind

    run(SqliteSpendStore(path, clock=Clock(), busy_timeout_s=0.05), body)


def test_memory_state_forgets_finished_requests_after_a_minute_and_keeps_lapsed_ones() -> None:
    """One process's spend state does not grow with every request it ever saw: a finished request is
    remembered for a minute (its id cannot hold a second reservation meanwhile), a lapsed one for retain_s
    (a late settle still counts), and a second settle of a forgotten request changes nothing."""
    w = key_window(10**9)
    clock = Clock()

    async def body() -> None:
        store = MemorySpendStore(clock=clock)
        for i in range(1000):
            await store.reserve(f"r{i}", [w], 10, 30)
            await store.settle(f"r{i}", 7)
        await store.reserve("lapses", [w], 10, 30)
        with pytest.raises(ValueError, match="already holds"):
            await store.reserve("r999", [w], 10, 30)
        clock.advance(61)
        assert await store.usage(w) == (7000, 0)  # the lapsed one was taken out
        assert len(store._holds) == 1 and len(store._forgets) == 1 and not store._finished
        assert await store.settle("r5", 7) is False  # forgotten: nothing happens
        assert await store.settle("lapses", 4) is True  # a late settle still counts
        assert await store.usage(w) == (7004, 0)

    asyncio.run(body())
