"""The spend store: budget reservations, settlement and spend per calendar period, behind one Protocol.

A request **reserves** its worst-case cost in every window that applies — atomically: every window gets it or
none does — then **settles** to its real cost (idempotent by request id) or **releases** it. A reservation
expires after its ttl, so a crashed worker cannot lock a budget; a settle that arrives after the expiry
still records the spend, exactly once, for ``retain_s`` (default one day) after the expiry. The layer
settles with ``finish_soon``: the settle lands within a few ms, batched with others (``mux.stores.deferred``);
until it does, the reservation still holds the request's worst case, so the cap is never the looser for it.

Spend is counted per ``(scope_key, period, period start)``: two budgets on the same scope and period (say a
key's shorthand budget and a named budget with another cap) read one counter, and a request touching both
is counted once in it. A window's period is taken from the store's clock at reservation; the settle books the
spend in that same period. Amounts are integer nano-USD (``mux.money.units``).

Backends: ``MemorySpendStore`` (one process; its counters can start from a seed, such as the request ledger's
spend), ``SqliteSpendStore`` (the workers of one machine share a file), ``RedisSpendStore`` (replicas share a
server; one Lua script, one round trip, per call). ``spend_store`` puts the shared two behind leases
(``mux.stores.spend.lease``): each worker admits against headroom reserved ahead, under the same cap.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from msgspec import Struct

from mux.money.admission import admit, headroom
from mux.money.periods import check_period, window
from mux.stores.state_url import MemoryState, RedisState, SqliteState, StateURL

Clock = Callable[[], float]
DEFAULT_RETAIN_S = 86_400.0


class BudgetWindow(Struct, frozen=True, gc=False):
    """One budget as the store sees it: a cap on a scope's spend in a calendar period.

    ``scope_key`` names what is capped: ``key:acme``, ``end_user:user_42``, ``tag:tenant=acme``,
    ``team:search``, ``global``. A window with ``enforce=False`` (a ``warn`` budget) is reserved and settled
    like the others but never refuses.
    """

    name: str
    scope_key: str
    cap_nano: int
    period: str  # day | week | month | total
    enforce: bool = True

    def __post_init__(self) -> None:
        check_period(self.period)


class WindowUsage(Struct, gc=False):
    """A window's counter in its current period: what is spent, what reservations hold, and the cap."""

    name: str
    scope_key: str
    period: str
    cap_nano: int
    spent_nano: int
    reserved_nano: int
    period_start: int  # epoch seconds
    resets_at: int | None  # epoch seconds; None for "total"
    enforce: bool = True

    @property
    def remaining_nano(self) -> int:
        """The largest reservation this window would admit now (0 when none)."""
        return headroom(self.spent_nano, self.reserved_nano, self.cap_nano) or 0


class Admission(Struct, gc=False):
    """The answer to ``reserve``.

    ``windows`` holds every window in the order given: after the reservation when admitted, as found when
    refused. ``refused`` is the first enforced window the amount did not fit (None when admitted).
    """

    admitted: bool
    windows: list[WindowUsage]
    refused: WindowUsage | None = None

    @property
    def headroom_nano(self) -> int | None:
        """The smallest remaining amount over the enforced windows (None without any)."""
        rooms = [w.remaining_nano for w in self.windows if w.enforce]
        return min(rooms) if rooms else None


class SpendStore(Protocol):
    """Budget state; see the module docstring for the guarantees every backend gives."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def reserve(
        self, request_id: str, windows: Sequence[BudgetWindow], amount_nano: int, ttl_s: float
    ) -> Admission:
        """Reserve ``amount_nano`` in every window, or in none; raise ValueError if ``request_id`` is known."""
        ...

    async def settle(self, request_id: str, actual_nano: int) -> bool:
        """Replace the reservation by the spend ``actual_nano`` in each of its windows; answer whether this
        call recorded it (False when already settled or released, or unknown)."""
        ...

    async def release(self, request_id: str) -> bool:
        """Drop the reservation without spend; answer whether this call dropped it."""
        ...

    def finish_soon(self, request_id: str, actual_nano: int | None) -> None:
        """Settle to ``actual_nano`` (release when None) within a few ms, off the caller's path: queued and
        run in a batch (``mux.stores.deferred``); ``usage``, ``flush`` and ``close`` see it done."""
        ...

    async def flush(self) -> None:
        """Run the queued settles and releases now."""
        ...

    async def usage(self, window: BudgetWindow) -> tuple[int, int]:
        """Answer ``(spent_nano, reserved_nano)`` of ``window`` in its current period."""
        ...

    async def add_spend(self, window: BudgetWindow, nano: int, at: float | None = None) -> None:
        """Add ``nano`` to the spend of ``window`` in the period holding epoch ``at`` (default: now), as it
        stands (a seeded memory store adds its seed once, on the counter's first reservation or usage)."""
        ...


def spend_store(
    state: StateURL,
    *,
    clock: Clock | None = None,
    prefix: str = "mux:",
    seed: Callable[[str, int], Awaitable[int]] | None = None,
) -> SpendStore:
    """Answer an unopened spend store for ``state`` (``clock`` defaults to ``time.time``; ``prefix`` names the
    Redis keys). ``seed`` starts each counter of a ``memory`` store from the spend before this process
    (``mux.stores.spend.memory``); the other backends keep their spend, so they take none (ValueError)."""
    if isinstance(state, MemoryState):
        from mux.stores.spend.memory import MemorySpendStore

        return MemorySpendStore(clock=clock or time.time, seed=seed)
    if seed is not None:
        raise ValueError("only memory state is seeded: the other backends keep their spend across restarts")
    from mux.stores.spend.lease import LeasedSpendStore

    if isinstance(state, SqliteState):
        from mux.stores.spend.sqlite import SqliteSpendStore

        return LeasedSpendStore(SqliteSpendStore(state.path, clock=clock or time.time), clock=clock or time.time)
    if isinstance(state, RedisState):
        from mux.stores.spend.redis import RedisSpendStore

        return LeasedSpendStore(RedisSpendStore(state.url(), clock=clock, prefix=prefix), clock=clock or time.time)
    raise TypeError(f"not a state: {type(state).__name__}")


# ---- shared by the backends ----------------------------------------------------------------------------


class Plan(Struct, gc=False):
    """A reservation laid out: the distinct counters it touches and, per window, its counter's index."""

    counters: list[str]  # "scope_key|period|start", unique
    index: list[int]  # per window
    starts: list[int]  # per counter
    resets: list[int | None]  # per counter


def counter_key(scope_key: str, period: str, start: int) -> str:
    """The identity of one spend counter. Unique: ``period`` and ``start`` are parsed back from the right."""
    return f"{scope_key}|{period}|{start}"


def plan(windows: Sequence[BudgetWindow], now: float) -> Plan:
    """Lay out ``windows`` at epoch ``now``: one counter per distinct (scope, period, start)."""
    counters: list[str] = []
    where: dict[str, int] = {}
    index: list[int] = []
    starts: list[int] = []
    resets: list[int | None] = []
    for w in windows:
        start, resets_at = window(w.period, now)
        key = counter_key(w.scope_key, w.period, start)
        i = where.get(key)
        if i is None:
            i = where[key] = len(counters)
            counters.append(key)
            starts.append(start)
            resets.append(resets_at)
        index.append(i)
    return Plan(counters, index, starts, resets)


def decide(windows: Sequence[BudgetWindow], p: Plan, values: Sequence[tuple[int, int]], amount: int) -> Admission:
    """Answer the admission of ``amount`` given each counter's ``(spent, reserved)`` before the reservation.

    Pure; the backends call it inside their atomic step (the Redis script mirrors it in Lua).
    """
    refused = -1
    for j, (w, i) in enumerate(zip(windows, p.index, strict=False)):
        if w.enforce and not admit(values[i][0], values[i][1], amount, w.cap_nano):
            refused = j
            break
    extra = amount if refused < 0 else 0
    out = [usage_of(w, p, i, (values[i][0], values[i][1] + extra)) for w, i in zip(windows, p.index, strict=False)]
    return Admission(refused < 0, out, out[refused] if refused >= 0 else None)


def check_reservation(amount: int, ttl_s: float, retain_s: float) -> None:
    """Refuse a negative amount and a ttl that is not positive or not shorter than ``retain_s``."""
    if amount < 0:
        raise ValueError("a reservation cannot be negative")
    if not 0 < ttl_s < retain_s:
        raise ValueError(f"a reservation ttl must be positive and shorter than retain_s ({retain_s} s)")


def usage_of(w: BudgetWindow, p: Plan, i: int, value: tuple[int, int]) -> WindowUsage:
    """The ``WindowUsage`` of window ``w`` on counter ``i`` holding ``(spent, reserved)``."""
    return WindowUsage(
        w.name, w.scope_key, w.period, w.cap_nano, value[0], value[1], p.starts[i], p.resets[i], w.enforce
    )


# ---- leases (mux.stores.spend.lease) --------------------------------------------------------------------

LEASE_SHARE = 8  # a lease's top-up takes at most this fraction (1/8) of the headroom it finds free


class LeaseCall(Struct, frozen=True, gc=False):
    """One worker's lease on one counter, renewed in one atomic step (``LeasingBackend.lease``).

    The counter's ``spent`` grows by ``spend`` (what the worker's requests settled since its last call) and
    the lease, a reservation under ``lease_id``, is replaced by ``grant`` of it: at least ``keep`` (what the
    worker's requests in flight hold), plus a top-up under ``cap`` (the smallest enforced cap on the counter;
    None: nothing refuses)."""

    lease_id: str
    counter: str
    resets: int | None  # the counter's period end (epoch seconds), None for "total"
    cap: int | None
    keep: int
    spend: int
    need: int  # the top-up is worth having only from this much (a request's worst case)
    want: int  # the top-up asked for
    exact: bool  # a request waits: grant exactly ``need`` when that fits and a share of the headroom does not
    ttl_s: float


def grant(call: LeaseCall, spent: int, reserved_others: int) -> int:
    """Answer the lease ``call`` gets on a counter at ``spent`` where other holds reserve ``reserved_others``
    (pure; the Redis script mirrors it): ``keep``, plus ``want`` but no more than ``1/LEASE_SHARE`` of the
    headroom left beyond ``keep``; a top-up below ``need`` is none, or exactly ``need`` when ``exact`` and it
    fits."""
    if call.cap is None:
        return call.keep + max(call.need, call.want)
    free = call.cap - spent - reserved_others - call.keep
    extra = min(call.want, free // LEASE_SHARE)
    if extra < call.need:
        extra = call.need if call.exact and free >= call.need else 0
    return call.keep + max(0, extra)
