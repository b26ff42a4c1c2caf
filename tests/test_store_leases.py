"""Leases: budgets and rate limits admitted in memory against headroom each worker took from the shared store
(``mux.stores.spend.lease``, ``mux.stores.limits.lease``), with several store instances on one SQLite file or
one Redis database as the workers (and, once, two spawned processes). Caps and limits hold across workers,
near a cap every request is decided in the shared store, spend reaches the shared counter, a crashed worker's
lease frees itself after its ttl, and the request path skips the store for most requests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mux.stores.limits.lease import LeasedRateLimitStore
from mux.stores.spend import BudgetWindow, LeaseCall, grant
from mux.stores.spend.lease import FLUSH_S, LEASE_TTL_S, LeasedSpendStore
from tests.store_backends import Backend, Clock, limits_worker, require_redis, run_two, spend_worker

SHARED = ["sqlite", "redis"]
W = 1_000  # one request's worst case, nano-USD


@pytest.fixture(params=SHARED)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "redis":
        asyncio.run(require_redis())
    b = Backend(request.param, str(tmp_path))
    yield b
    b.cleanup()


def window(cap: int) -> BudgetWindow:
    return BudgetWindow("shared", "key:shared", cap, "day")


class Counting:
    """Counts the lease renewals and acquires that reach the shared store."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def lease(self, calls: Any) -> Any:
        self.calls += 1
        return await self.inner.lease(calls)

    async def acquire(self, *args: Any) -> Any:
        self.calls += 1
        return await self.inner.acquire(*args)

    async def acquire_all(self, *args: Any) -> Any:
        self.calls += 1
        return await self.inner.acquire_all(*args)


def test_the_lease_grant_takes_a_share_of_the_headroom_and_is_exact_near_the_cap():
    def call(keep: int = 0, need: int = W, want: int = 100 * W, exact: bool = True, cap: int | None = 100 * W):
        return LeaseCall("l", "c", None, cap, keep, 0, need, want, exact, 3.0)

    assert grant(call(), 0, 0) == 100 * W // 8  # an eighth of the headroom
    assert grant(call(want=3 * W), 0, 0) == 3 * W  # no more than asked
    assert grant(call(keep=2 * W), 0, 90 * W) == 2 * W + W  # 8 W free: an eighth is W, exactly the need
    assert grant(call(keep=2 * W), 0, 93 * W) == 2 * W + W  # 5 W free: exactly the waiting request
    assert grant(call(keep=2 * W, exact=False), 0, 93 * W) == 2 * W  # the background takes no crumbs
    assert grant(call(keep=2 * W), 0, 97.5 * W) == 2 * W  # the request does not fit: only what is in flight
    assert grant(call(keep=5 * W), 98 * W, 0) == 5 * W  # in flight is kept even past the cap
    assert grant(call(cap=None, want=7 * W), 0, 0) == 7 * W  # a warn budget: nothing refuses


def test_two_workers_sharing_a_budget_never_pass_its_cap_and_spend_reaches_the_shared_counter(backend):
    clock = Clock()

    async def main() -> None:
        a, b = backend.leased_spend(clock), backend.leased_spend(clock)
        await a.open()
        await b.open()
        try:
            cap = 40 * W + W // 2
            answers = await asyncio.gather(
                *(s.reserve(f"{n}-{i}", [window(cap)], W, 60) for i in range(40) for n, s in (("a", a), ("b", b)))
            )
            admitted = sum(x.admitted for x in answers)
            assert 36 <= admitted <= 40  # never past the cap; early refusals only from the other's unused lease
            for n, s in (("a", a), ("b", b)):
                for i in range(40):
                    s.finish_soon(f"{n}-{i}", W // 2)
            await a.flush()
            await b.flush()
            spent, reserved = await a.usage(window(cap))
            assert spent == admitted * W // 2
            assert reserved >= 0  # b's unused lease, if any, is a reservation to a
            shared = backend.spend(clock)
            await shared.open()
            try:
                s_spent, s_reserved = await shared.usage(window(cap))
                assert s_spent == spent and s_spent + s_reserved <= cap
            finally:
                await shared.close()
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_near_the_cap_every_request_is_decided_in_the_shared_store(backend):
    clock = Clock()

    async def main() -> None:
        a, b = backend.leased_spend(clock), backend.leased_spend(clock)
        await a.open()
        await b.open()
        try:
            cap = 3 * W + W // 2  # less than eight worst cases: no lease takes more than the request itself
            admitted = [(await s.reserve(f"r{i}", [window(cap)], W, 60)).admitted for i, s in enumerate([a, b] * 3)]
            assert admitted == [True, True, True, False, False, False]
            refused = await b.reserve("late", [window(cap)], W, 60)
            assert not refused.admitted and refused.refused is not None
            assert refused.refused.reserved_nano == 3 * W and refused.refused.name == "shared"
            await a.release("r0")  # its room is back for the other worker within FLUSH_S
            await asyncio.sleep(FLUSH_S + 0.1)
            assert (await b.reserve("after", [window(cap)], W, 60)).admitted
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_most_requests_are_admitted_without_a_store_call(backend):
    clock = Clock()

    async def main() -> None:
        counting = Counting(backend.spend(clock))
        store = LeasedSpendStore(counting, clock=clock)
        await store.open()
        try:
            for i in range(200):
                assert (await store.reserve(f"r{i}", [window(10**9)], W, 60)).admitted
                store.finish_soon(f"r{i}", W // 3)
                await asyncio.sleep(0)
            assert counting.calls < 40, counting.calls
            await store.flush()
            assert (await store.usage(window(10**9))) == (200 * (W // 3), 0)  # its own unused lease not counted
        finally:
            await store.close()

    asyncio.run(main())


def test_a_crashed_workers_lease_frees_itself_after_its_ttl(backend):
    clock = Clock()

    async def main() -> None:
        doomed, survivor = backend.leased_spend(clock), backend.leased_spend(clock)
        await doomed.open()
        await survivor.open()
        try:
            cap = 2 * W
            assert (await doomed.reserve("held-1", [window(cap)], W, 600)).admitted
            assert (await doomed.reserve("held-2", [window(cap)], W, 600)).admitted
            # the worker dies: no renewal, no release (its connection closes without a word)
            task = doomed._task
            if task is not None:
                task.cancel()
            await doomed.inner.close()
            assert not (await survivor.reserve("s1", [window(cap)], W, 60)).admitted
            clock.advance(LEASE_TTL_S - 0.5)
            assert not (await survivor.reserve("s2", [window(cap)], W, 60)).admitted
            clock.advance(1.0)  # past the lease's ttl, though the requests' own ttl (600 s) is not
            assert (await survivor.reserve("s3", [window(cap)], W, 60)).admitted
            assert (await survivor.reserve("s4", [window(cap)], W, 60)).admitted
        finally:
            await survivor.close()

    asyncio.run(main())


def test_a_live_worker_keeps_its_lease_renewed_while_its_requests_run(backend):
    async def main() -> None:
        a, b = backend.leased_spend(), backend.leased_spend()
        await a.open()
        await b.open()
        try:
            cap = 2 * W
            assert (await a.reserve("long", [window(cap)], 2 * W, 600)).admitted
            await asyncio.sleep(LEASE_TTL_S + 0.5)  # the background renewed it
            assert not (await b.reserve("other", [window(cap)], W, 60)).admitted
            a.finish_soon("long", W)
            await a.flush()
            assert (await b.reserve("other-2", [window(cap)], W, 60)).admitted
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_two_leasing_worker_processes_let_at_most_the_cap_through(backend, tmp_path):
    admitted = run_two(
        spend_worker,
        *[(backend.kind, str(tmp_path), backend.prefix, name, 10 * W, W, 50) for name in ("a", "b")],
        leased=True,
    )
    assert sum(admitted) == 10, admitted  # ten worst cases is less than eight: decided one by one


# ---- rate limits ---------------------------------------------------------------------------------------------


def test_rate_limit_allowances_admit_most_requests_without_a_store_call(backend):
    async def main() -> None:
        shared = [Counting(backend.limits()), Counting(backend.limits())]
        workers = [LeasedRateLimitStore(c) for c in shared]
        for w in workers:
            await w.open()
        try:
            for i in range(900):
                answer = (await workers[i % 2].acquire_all([("key:many", 60_000, 10**7)], 10))[0]
                assert answer.admitted and answer.requests is not None and answer.requests.remaining > 0
                await asyncio.sleep(0.001 if i % 10 == 0 else 0)
            assert sum(c.calls for c in shared) < 900 / 3, [c.calls for c in shared]
        finally:
            for w in workers:
                await w.close()

    asyncio.run(main())


def test_workers_with_allowances_never_pass_the_limit_by_more_than_a_second_of_its_rate(backend):
    async def main() -> None:
        workers = [backend.leased_limits(), backend.leased_limits()]
        for w in workers:
            await w.open()
        try:
            rpm, tpm, started, admitted, tokens = 600, 60_000, time.monotonic(), 0, 0
            for i in range(1200):
                if (await workers[i % 2].acquire_all([("key:shared", rpm, tpm)], 50))[0].admitted:
                    admitted, tokens = admitted + 1, tokens + 50
                await asyncio.sleep(0.001 if i % 10 == 0 else 0)
            elapsed = time.monotonic() - started
            assert admitted <= rpm + (elapsed + 1.0) * rpm / 60  # the burst, its rate, and a second early
            assert tokens <= tpm + (elapsed + 1.0) * tpm / 60
            assert admitted >= min(rpm, tpm // 50) * 0.8  # early refusals: others' allowances, at most an eighth
        finally:
            for w in workers:
                await w.close()

    asyncio.run(main())


def test_near_the_rate_limit_every_request_goes_to_the_shared_bucket(backend):
    async def main() -> None:
        workers = [backend.leased_limits(), backend.leased_limits()]
        for w in workers:
            await w.open()
        try:
            answers = []
            for i in range(12):
                answers.append((await workers[i % 2].acquire("key:few", 5, None, 0)).admitted)
                await asyncio.sleep(0.01)
            assert answers.count(True) == 5 and answers[:5] == [True] * 5
        finally:
            for w in workers:
                await w.close()

    asyncio.run(main())


def test_an_unused_allowance_is_given_back(backend):
    async def main() -> None:
        first = backend.leased_limits()
        await first.open()
        rpm = 800
        for _ in range(20):
            await first.acquire("key:back", rpm, None, 0)
            await asyncio.sleep(0.01)
        assert first._allowances  # it holds requests it did not use
        await first.close()  # and gives them back
        second = backend.limits()
        await second.open()
        try:
            answer = await second.acquire("key:back", rpm, None, 0)
            assert answer.requests is not None and answer.requests.remaining >= rpm - 20 - 2
        finally:
            await second.close()

    asyncio.run(main())


def test_two_worker_processes_with_allowances_keep_a_small_limit_exact(backend, tmp_path):
    admitted = run_two(limits_worker, *[(backend.kind, str(tmp_path), backend.prefix, 20, 20)] * 2, leased=True)
    assert sum(admitted) == 20, admitted


def test_a_lease_with_room_left_is_renewed_while_its_one_request_runs(backend):
    async def main() -> None:
        a, b = backend.leased_spend(), backend.leased_spend()
        await a.open()
        await b.open()
        try:
            cap = 100 * W
            assert (await a.reserve("long", [window(cap)], W, 600)).admitted  # its lease has room beyond it
            await asyncio.sleep(LEASE_TTL_S + 1.0)  # longer than an unrenewed lease lives
            refused = await b.reserve("big", [window(cap)], cap - W // 2, 60)
            assert not refused.admitted  # the W in flight is still held in the shared counter
            assert refused.refused is not None and refused.refused.reserved_nano == W
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


class Gated(Counting):
    """Counts like ``Counting``; while ``closed``, a lease renewal or an allowance take waits at the gate."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.fail = False

    async def _through(self) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.fail:
            raise ConnectionError("the store went away")

    async def lease(self, calls: Any) -> Any:
        await self._through()
        return await super().lease(calls)

    async def acquire(self, *args: Any) -> Any:
        await self._through()
        return await super().acquire(*args)


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("renewal_fails", [False, True])
def test_requests_are_admitted_while_a_renewal_is_under_way_and_stay_covered(backend, renewal_fails):
    async def main() -> None:
        gated = Gated(backend.spend())
        store = LeasedSpendStore(gated)
        other = backend.spend()
        await store.open()
        await other.open()
        try:
            cap = 10**9  # far from the cap: the lease asks for, and gets, whole top-ups
            for i in range(40):
                assert (await store.reserve(f"warm{i}", [window(cap)], W, 60)).admitted
                store.finish_soon(f"warm{i}", W)
                await asyncio.sleep(0.002)
            await store.flush()
            gated.gate.clear()
            gated.fail = renewal_fails
            assert (await store.reserve("start", [window(cap)], W, 60)).admitted
            store.finish_soon("start", W)  # a renewal within FLUSH_S, which waits at the gate
            await _until(lambda: gated.waiting == 1)
            during = 0
            for i in range(5):  # admitted at once against the slack the renewal keeps, no waiting
                answer = await asyncio.wait_for(store.reserve(f"during{i}", [window(cap)], W, 60), 1.0)
                assert answer.admitted
                during += 1
            gated.gate.set()
            await _until(lambda: gated.waiting == 0)
            await asyncio.sleep(0.01)
            gated.fail = False  # the store is back for the next renewals
            # every request admitted during the renewal is held in the shared counter, by the renewed lease or,
            # when the renewal failed, by the lease it was to replace
            spent, reserved = await other.usage(window(cap))
            assert reserved >= during * W, (spent, reserved)
            for i in range(during):
                assert await store.settle(f"during{i}", W)
            await store.flush()
            assert (await other.usage(window(cap)))[0] == (40 + 1 + during) * W
        finally:
            gated.gate.set()
            await store.close()
            await other.close()

    asyncio.run(main())


def test_near_the_cap_a_renewal_keeps_no_slack(backend):
    async def main() -> None:
        gated = Gated(backend.spend())
        store = LeasedSpendStore(gated)
        await store.open()
        try:
            cap = 4 * W  # a lease near the cap never got the whole top-up it asked for
            assert (await store.reserve("a", [window(cap)], W, 60)).admitted
            gated.gate.clear()
            store.finish_soon("a", W)
            await _until(lambda: gated.waiting == 1)
            waiting = asyncio.ensure_future(store.reserve("b", [window(cap)], W, 60))
            await asyncio.sleep(0.1)
            assert not waiting.done()  # decided after the renewal's answer, not against a slack
            gated.gate.set()
            assert (await waiting).admitted
        finally:
            gated.gate.set()
            await store.close()

    asyncio.run(main())


def test_an_allowance_keeps_admitting_while_the_next_one_is_taken(backend):
    async def main() -> None:
        gated = Gated(backend.limits())
        store = LeasedRateLimitStore(gated)
        await store.open()
        limit = ("key:steady", 600_000, 10**9)
        try:
            for _ in range(300):  # an allowance sized to the demand
                assert (await store.acquire_all([limit], 10))[0].admitted
                await asyncio.sleep(0.001)
            gated.gate.clear()
            for _ in range(10_000):  # use the allowance up until the next one is asked for (it waits at the gate)
                if gated.waiting:
                    break
                assert (await store.acquire_all([limit], 10))[0].admitted
                await asyncio.sleep(0)
            assert gated.waiting == 1
            before = gated.calls
            for _ in range(5):
                assert (await asyncio.wait_for(store.acquire_all([limit], 10), 1.0))[0].admitted
            assert gated.calls == before  # admitted against the allowance held, not by the shared bucket
            gated.gate.set()
        finally:
            gated.gate.set()
            await store.close()

    asyncio.run(main())
