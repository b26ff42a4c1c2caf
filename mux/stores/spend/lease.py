"""Budget leases: a worker admits requests against headroom it reserved in the shared spend store ahead of
them, so the request path does not wait for a store round trip per request.

``LeasedSpendStore(inner)`` answers as ``SpendStore`` over a shared backend (SQLite, Redis) that can renew
leases (``LeasingBackend.lease``). Per spend counter a worker holds one **lease**: a reservation in the shared
counter, under the cap, that covers what its requests in flight reserved locally, what they settled since the
last renewal, and a top-up for the next ones. A request whose worst case fits the leases of all its counters
is admitted in memory. Otherwise it waits for one renewal of those leases that asks for room for it; near the
cap the top-up shrinks (to at most an eighth of the headroom left, ``LEASE_SHARE``) until a renewal grants
exactly the request's worst case when it fits and nothing when it does not: per-request admission in the
shared store. While a renewal is under way, requests are admitted against the slack it keeps (``_sync``)
instead of waiting for its answer; near the cap there is none. A renewal is one atomic step per counter: the
settled spend moves into the counter's spent, and the lease becomes the in-flight reservations plus the top-
up.

A background task renews: spend settled by ``finish_soon`` is moved to the shared counter, and the room of a
finished request handed back where the lease is no larger than its requests (near a cap), within
``FLUSH_S``; a lease running low is topped up at once; every lease is renewed every ``RENEW_S``, asking for
about ``HORIZON_S`` of its worker's recent demand, and an idle one shrinks to what its requests in flight
hold (nothing, once they are done). A lease lives ``LEASE_TTL_S`` in the shared store unless renewed, so a
crashed worker's lease, with its requests in flight, frees itself within that; a worker that cannot renew
stops admitting against a lease ``MARGIN_S`` before it would expire.

**Guarantees.** Everything a worker admitted and has not yet settled into the shared counter is covered by
its lease, and every lease was granted under the cap, so the sum of admitted worst cases never passes a cap
(as without leases). A request can be refused while its worst case would still fit the cap only when other
workers' leases hold the room: each top-up is at most an eighth of the headroom its worker found free and
about ``HORIZON_S`` of its own demand, and an idle lease is handed back within ``RENEW_S``. ``usage`` and the
``x-mux-budget-*`` headers count other workers' unused leases as reserved; this worker's own unused lease is
not counted.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from mux.money.periods import window as period_window
from mux.stores.spend import (
    DEFAULT_RETAIN_S,
    Admission,
    BudgetWindow,
    Clock,
    LeaseCall,
    check_reservation,
    counter_key,
    decide,
    plan,
    usage_of,
)

LEASE_TTL_S = 3.0
RENEW_S = 1.0
MARGIN_S = 1.0  # a lease is not used in its last second in the shared store
FLUSH_S = 0.05  # settled spend reaches the shared counter within this (the lease covers it meanwhile)
HORIZON_S = 2.0
SLACK_S = 0.25  # a renewal keeps about this much of the recent demand admissible while it is under way
WARN_EVERY_S = 10.0  # a store that cannot renew leases is logged at most this often


class LeasingBackend(Protocol):
    """A shared spend store that renews leases (``SqliteSpendStore``, ``RedisSpendStore``)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def lease(self, calls: Sequence[LeaseCall]) -> list[tuple[int, int, int]]: ...

    async def usage(self, window: BudgetWindow) -> tuple[int, int]: ...

    async def add_spend(self, window: BudgetWindow, nano: int, at: float | None = None) -> None: ...

    async def flush(self) -> None: ...


class _Lease:
    """This worker's lease on one counter, and what its requests did since the last renewal."""

    __slots__ = (
        "lease_id",
        "counter",
        "resets",
        "cap",
        "granted",
        "inflight",
        "unpushed",
        "spent",
        "reserved",
        "valid_until",
        "renewed_at",
        "admitted",
        "demand",
        "unit",
        "syncing",
        "slack",
        "pushing",
        "ample",
        "finished",
        "live",
    )

    def __init__(self, lease_id: str, counter: str, resets: int | None, cap: int | None) -> None:
        self.lease_id = lease_id
        self.counter = counter
        self.resets = resets
        self.cap = cap
        self.granted = 0  # the lease in the shared counter
        self.inflight = 0  # worst cases of this worker's requests in flight
        self.unpushed = 0  # spend settled here, not yet in the shared counter
        self.spent = 0  # the shared counter at the last renewal
        self.reserved = 0
        self.valid_until = -1.0
        self.renewed_at = 0.0
        self.admitted = 0  # worst cases admitted since the last renewal
        self.demand = 0.0  # nano-USD a second, recently
        self.unit = 0  # the last request's worst case
        self.syncing: asyncio.Future[None] | None = None
        self.slack = 0  # while a renewal is under way: what requests may still take of the room it keeps
        self.pushing = 0  # while a renewal is under way: the settled spend it moves to the shared counter
        self.ample = False  # the last renewal granted the whole top-up it asked for (far from the cap)
        self.finished = False  # a request finished since the last renewal
        self.live = True  # False once dropped from its store's leases

    def fits(self, amount: int, now: float) -> bool:
        """Whether a request of worst case ``amount`` can be admitted against this lease now: within its room,
        or, while a renewal is under way, within the slack that renewal keeps."""
        if now >= self.valid_until:
            return False
        if self.syncing is None:
            return self.inflight + self.unpushed + amount <= self.granted
        return amount <= self.slack

    def take(self, amount: int) -> None:
        """Admit a request of worst case ``amount`` that ``fits``."""
        self.inflight += amount
        self.admitted += amount
        self.unit = amount
        if self.syncing is not None:
            self.slack -= amount

    def view(self) -> tuple[int, int]:
        """The counter's ``(spent, reserved)`` as this worker knows it, without its own unused lease."""
        return self.spent + self.unpushed + self.pushing, self.reserved - self.granted + self.inflight


class _Hold:
    __slots__ = ("amount", "leases", "expires", "live")

    def __init__(self, amount: int, leases: list[_Lease], expires: float) -> None:
        self.amount = amount
        self.leases = leases
        self.expires = expires
        self.live = True


class LeasedSpendStore:
    """``SpendStore`` over the shared ``inner``, admitting against leases (see the module docstring).
    ``clock`` is epoch seconds (periods, expiries); give the one ``inner`` uses."""

    def __init__(
        self,
        inner: LeasingBackend,
        *,
        clock: Clock = time.time,
        retain_s: float = DEFAULT_RETAIN_S,
        ttl_s: float = LEASE_TTL_S,
        logger: Any = None,
    ) -> None:
        self.inner = inner
        self._clock = clock
        self._retain = retain_s
        self._ttl = ttl_s
        self._worker = uuid.uuid4().hex[:16]
        self._leases: dict[str, _Lease] = {}
        self._holds: dict[str, _Hold] = {}
        self._plans: dict[int, tuple[Sequence[BudgetWindow], float, Any, list[_Lease]]] = {}
        self._flush_due = False  # a renewal is scheduled within FLUSH_S
        self._warned_at = -math.inf
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._logger = logger or structlog.get_logger("mux.stores")

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        try:
            await self._quiet()
            if self._leases:
                await self._sync(list(self._leases.values()), None, hand_back=True)
        except Exception as exc:  # noqa: BLE001 - shutting down: the leases expire by themselves
            self._logger.error("budget_leases_not_returned", error=f"{type(exc).__name__}: {exc}")
        finally:
            await self.inner.close()

    async def __aenter__(self) -> LeasedSpendStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- admission ----

    async def reserve(
        self, request_id: str, windows: Sequence[BudgetWindow], amount_nano: int, ttl_s: float
    ) -> Admission:
        answer = self.reserve_nowait(request_id, windows, amount_nano, ttl_s)  # checks the arguments too
        if answer is not None:
            return answer
        now = self._clock()
        p, leases = self._laid_out(windows, now)
        for _ in range(16):
            short = [lease for lease in leases if not lease.fits(amount_nano, now)]
            if not short:
                break
            waiting = [lease.syncing for lease in short if lease.syncing is not None]
            if waiting:  # a renewal under way without slack enough for this request: wait for its answer
                await asyncio.wait(waiting)
                now = self._clock()
                continue
            await self._sync(short, amount_nano)
            now = self._clock()
            if any(not lease.fits(amount_nano, now) for lease in short):
                return self._refusal(windows, p, leases, short, amount_nano)
        else:
            return self._refusal(windows, p, leases, leases, amount_nano)
        views = [lease.view() for lease in leases]
        if len(windows) == 1 and (not windows[0].enforce or sum(views[0]) + amount_nano <= windows[0].cap_nano):
            spent, reserved = views[0]  # the common case, as decide answers it
            answer = Admission(True, [usage_of(windows[0], p, 0, (spent, reserved + amount_nano))])
        else:
            answer = decide(windows, p, views, amount_nano)
            if not answer.admitted:  # a lease kept for requests in flight past a cap: never admit beyond it
                return answer
        self._admit(request_id, leases, amount_nano, now + ttl_s)
        return answer

    def reserve_nowait(
        self, request_id: str, windows: Sequence[BudgetWindow], amount_nano: int, ttl_s: float
    ) -> Admission | None:
        """Answer ``reserve`` at once when the request is admitted in memory (its worst case fits the leases of
        all its counters, and every cap), holding it; else None, holding nothing: then ``reserve`` decides."""
        if amount_nano < 0 or not 0 < ttl_s < self._retain:
            check_reservation(amount_nano, ttl_s, self._retain)
        if not windows:
            return Admission(True, [])
        if request_id in self._holds:
            raise ValueError(f"request {request_id!r} already holds a reservation")
        now = self._clock()
        p, leases = self._laid_out(windows, now)
        if len(windows) == 1:  # the common case, one budget on one counter
            lease, w = leases[0], windows[0]
            if not lease.fits(amount_nano, now):
                return None
            spent, reserved = lease.view()
            if w.enforce and spent + reserved + amount_nano > w.cap_nano:
                return None
            self._admit(request_id, leases, amount_nano, now + ttl_s)
            return Admission(True, [usage_of(w, p, 0, (spent, reserved + amount_nano))])
        for lease in leases:
            if not lease.fits(amount_nano, now):
                return None
        answer = decide(windows, p, [lease.view() for lease in leases], amount_nano)
        if not answer.admitted:
            return None
        self._admit(request_id, leases, amount_nano, now + ttl_s)
        return answer

    def _admit(self, request_id: str, leases: list[_Lease], amount: int, expires: float) -> None:
        """Hold ``amount`` for ``request_id`` in each of ``leases`` (each ``fits`` it)."""
        for lease in leases:
            lease.take(amount)
            if lease.syncing is None and 4 * (lease.inflight + lease.unpushed) > 3 * lease.granted:
                self._wake_soon(0.0)
        if self._task is None:  # the renewal runs while any lease is held, or its requests lose their cover
            self._wake_soon(RENEW_S)
        self._holds[request_id] = _Hold(amount, leases, expires)

    def _laid_out(self, windows: Sequence[BudgetWindow], now: float) -> tuple[Any, list[_Lease]]:
        """Answer the plan of ``windows`` at ``now`` and the lease of each of its counters, remembered per
        windows list (the layer passes the same list for the same budgets) until a period of it ends."""
        found = self._plans.get(id(windows))
        if found is not None and found[0] is windows and now < found[1]:
            for lease in found[3]:
                if not lease.live:
                    break
            else:
                return found[2], found[3]
        p = plan(windows, now)
        caps: list[int | None] = [None] * len(p.counters)
        for w, i in zip(windows, p.index, strict=False):
            if w.enforce and (caps[i] is None or w.cap_nano < caps[i]):  # type: ignore[operator]
                caps[i] = w.cap_nano
        leases = [self._lease(c, r, cap) for c, r, cap in zip(p.counters, p.resets, caps, strict=False)]
        if len(self._plans) >= 4096:
            self._plans.clear()
        ends = [r for r in p.resets if r is not None]
        self._plans[id(windows)] = (windows, min(ends) if ends else math.inf, p, leases)
        return p, leases

    def _lease(self, counter: str, resets: int | None, cap: int | None) -> _Lease:
        lease = self._leases.get(counter)
        if lease is None:
            lease = self._leases[counter] = _Lease(f"lease:{self._worker}:{counter}", counter, resets, cap)
        elif lease.cap != cap:  # another set of budgets on the counter (a reload): renew under the new cap
            lease.cap, lease.valid_until = cap, -1.0
        return lease

    def _refusal(
        self, windows: Sequence[BudgetWindow], p: Any, leases: list[_Lease], short: list[_Lease], amount: int
    ) -> Admission:
        answer = decide(windows, p, [lease.view() for lease in leases], amount)
        if answer.admitted:  # the leases' view fits, the shared store did not: name the first short budget
            refused = next(
                (j for j, w in enumerate(windows) if w.enforce and leases[p.index[j]] in short),
                next(j for j, w in enumerate(windows) if w.enforce),
            )
            for u in answer.windows:
                u.reserved_nano -= amount
            return Admission(False, answer.windows, answer.windows[refused])
        return answer

    # ---- settlement ----

    async def settle(self, request_id: str, actual_nano: int) -> bool:
        if actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        return self._finish(request_id, actual_nano)

    async def release(self, request_id: str) -> bool:
        return self._finish(request_id, 0)

    def finish_soon(self, request_id: str, actual_nano: int | None) -> None:
        if actual_nano is not None and actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        self._finish(request_id, actual_nano or 0)

    def _finish(self, request_id: str, actual: int) -> bool:
        hold = self._holds.pop(request_id, None)
        if hold is None:
            return False
        for lease in hold.leases:
            if hold.live:
                lease.inflight -= hold.amount
            lease.unpushed += actual
            lease.finished = True
            if not lease.live:  # a lapsed hold's lease may have been dropped
                lease.live = True
                self._leases.setdefault(lease.counter, lease)
        if not self._flush_due:
            self._flush_due = True
            self._wake_soon(FLUSH_S)
        return True

    async def flush(self) -> None:
        await self._quiet()
        due = [lease for lease in self._leases.values() if lease.unpushed]
        if due:
            await self._sync(due, None)
        await self.inner.flush()

    async def usage(self, window: BudgetWindow) -> tuple[int, int]:
        await self.flush()
        spent, reserved = await self.inner.usage(window)
        start, _ = period_window(window.period, self._clock())
        lease = self._leases.get(counter_key(window.scope_key, window.period, start))
        if lease is not None and lease.syncing is None:
            spent += lease.unpushed
            reserved += lease.inflight - lease.granted
        return spent, reserved

    async def add_spend(self, window: BudgetWindow, nano: int, at: float | None = None) -> None:
        await self.inner.add_spend(window, nano, at)

    # ---- renewal ----

    async def _sync(self, leases: list[_Lease], need: int | None, *, hand_back: bool = False) -> None:
        """Renew ``leases`` in one store call: ``need`` is the worst case of a request waiting for room
        (None: the background's renewal, which tops up only by whole requests); ``hand_back`` asks for no
        top-up.

        While the call is under way, requests are admitted against a **slack**: part of the lease's unused
        room (about ``SLACK_S`` of its demand; none when idle, handing back, or near the cap, where the last
        renewal could not grant the whole top-up it asked for), which the call keeps as part of the lease
        (``keep``). The store can always grant it: it is room of the lease being replaced, still
        held in the shared counter (the lease is valid), less nothing the call adds. If the call fails, the
        old lease stands and covers them as before."""
        started = self._clock()
        calls = []
        pushed = []
        counted = [lease.admitted for lease in leases]
        for lease in leases:
            elapsed = max(started - lease.renewed_at, 0.05)
            lease.demand = max(lease.admitted / elapsed, lease.demand / 2)
            idle = hand_back or need is None and not lease.admitted  # nothing asked since: hand the top-up back
            want = 0 if idle else max(int(lease.demand * HORIZON_S), 2 * (need or lease.unit))
            room = lease.granted - lease.inflight - lease.unpushed
            slack = 0
            if lease.ample and not idle and room > 0 and started < lease.valid_until:
                slack = min(room, max(int(lease.demand * SLACK_S), 2 * lease.unit))
            push, lease.unpushed = lease.unpushed, 0
            pushed.append(push)
            lease.pushing, lease.slack = push, slack
            lease.finished = False
            calls.append(
                LeaseCall(
                    lease.lease_id,
                    lease.counter,
                    lease.resets,
                    lease.cap,
                    lease.inflight + slack,
                    push,
                    0 if idle else need if need is not None else lease.unit,
                    want,
                    need is not None,
                    self._ttl,
                )
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for lease in leases:
            lease.syncing = done
        try:
            grants = await self.inner.lease(calls)
        except BaseException:
            for lease, push in zip(leases, pushed, strict=True):
                lease.unpushed += push
            raise
        else:
            for lease, (granted, spent, reserved), asked, call in zip(leases, grants, counted, calls, strict=True):
                lease.granted, lease.spent, lease.reserved = granted, spent, reserved
                lease.ample = call.want > 0 and granted - call.keep >= call.want
                lease.valid_until = started + self._ttl - MARGIN_S
                lease.renewed_at = started
                lease.admitted -= asked  # what was admitted while the call was under way counts for the next
        finally:
            for lease in leases:
                lease.syncing = None
                lease.slack = lease.pushing = 0
            done.set_result(None)

    async def _quiet(self) -> None:
        """Return once no renewal is under way (a lease is renewed by one call at a time)."""
        while True:
            waiting = {id(f): f for f in (lease.syncing for lease in self._leases.values()) if f is not None}
            if not waiting:
                return
            await asyncio.wait(waiting.values())

    def _wake_soon(self, delay: float) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._renewing())
        if delay <= 0:
            assert self._wake is not None
            self._wake.set()
        else:
            asyncio.get_running_loop().call_later(delay, self._wake.set)  # type: ignore[union-attr]

    async def _renewing(self) -> None:
        """The background renewal (see the module docstring); ends once no lease is left."""
        wake = self._wake
        assert wake is not None
        try:
            while self._leases:
                try:
                    await asyncio.wait_for(wake.wait(), RENEW_S / 2)
                except TimeoutError:
                    pass
                wake.clear()
                self._flush_due = False
                now = self._clock()
                self._purge(now)
                due = [
                    lease
                    for lease in self._leases.values()
                    if lease.syncing is None
                    and (
                        lease.unpushed
                        or lease.finished
                        or 4 * lease.inflight > 3 * lease.granted
                        or (lease.granted or lease.inflight)
                        and now - lease.renewed_at >= RENEW_S
                    )
                ]
                if due:
                    try:
                        await self._sync(due, None)
                    except Exception as exc:  # noqa: BLE001 - tried again at the next tick
                        if now - self._warned_at >= WARN_EVERY_S:
                            self._warned_at = now
                            self._logger.warning("budget_lease_renewal_failed", error=f"{type(exc).__name__}: {exc}")
                for lease in list(self._leases.values()):
                    if not (lease.granted or lease.inflight or lease.unpushed) and lease.syncing is None:
                        lease.live = False
                        del self._leases[lease.counter]
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                self._flush_due = False

    def _purge(self, now: float) -> None:
        """Take lapsed holds out of their leases (a late settle still counts), and forget them after
        ``retain_s``."""
        gone = []
        for rid, hold in self._holds.items():
            if hold.expires <= now:
                if hold.live:
                    hold.live = False
                    for lease in hold.leases:
                        lease.inflight -= hold.amount
                elif hold.expires + self._retain <= now:
                    gone.append(rid)
        for rid in gone:
            del self._holds[rid]
