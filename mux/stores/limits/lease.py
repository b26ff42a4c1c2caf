"""Rate-limit allowances: a worker takes a few requests' and tokens' worth from the shared GCRA bucket at
once, then admits requests against them in memory, so the request path does not wait for a store round trip
per request.

``LeasedRateLimitStore(inner)`` answers as ``RateLimitStore`` over a shared backend (SQLite, Redis) whose
``acquire`` takes several requests at once and which gives back what was taken (``give_back_soon``). Per limit
(scope and limits) a worker holds at most one **allowance**: ``n`` requests and ``m`` tokens it took from the
shared bucket in one atomic ``acquire``. A request that fits the allowances of all its limits is admitted in
memory; otherwise it is decided by the shared store exactly as without allowances (one ``acquire_all``), and
the background tops the allowances up. An allowance asks for about ``HORIZON_S`` of its worker's recent
demand, but never more than an eighth (``SHARE``) of what the bucket had left at the last answer, and none
smaller than ``LEAST`` (4) requests — near the limit, and for small limits (a bucket with fewer than 32
requests left), there is none, and every request goes to the shared bucket. An allowance is used for at most
``VALID_S``; what is left then is given back to the shared bucket. While the next allowance is being taken,
the one held keeps admitting; what is left of it is given back once the next one is there. A token correction
goes to the limit's allowance when it has one that covers it (so a refund is given back with it), else to the
shared bucket.

**Accuracy across workers.** Every admitted request was charged to the shared bucket before it was admitted,
at most ``VALID_S`` (1 s) before, so over any interval the requests and tokens admitted by all workers
together are at most what the limit admits over that interval plus ``VALID_S`` of its rate (a sixtieth of a
per-minute limit). A request can be refused while the bucket alone would have admitted it only when other
workers' allowances hold that room: each at most an eighth of what the bucket had left when taken, given back
within ``VALID_S`` when unused; a crashed worker's allowance drains away with the bucket. The
``x-ratelimit-remaining-*`` headers of a request admitted in memory are what the bucket had left when the
allowance was taken plus what is left of the allowance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from mux.stores.limits import Clock, Limit, LimitState, RateDecision, check

VALID_S = 1.0
HORIZON_S = 0.5
SHARE = 8
LEAST = 4  # an allowance smaller than this many requests is not taken


class AllotingBackend(Protocol):
    """A shared rate-limit store that takes several requests at once and gives them back."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(
        self, scope_key: str, rpm: int | None, tpm: int | None, tokens: int, requests: int = 1
    ) -> RateDecision: ...

    async def acquire_all(self, limits: Sequence[Limit], tokens: int) -> list[RateDecision]: ...

    async def correct(self, scope_key: str, tpm: int | None, token_delta: int) -> None: ...

    def correct_soon(self, scope_key: str, tpm: int | None, token_delta: int) -> None: ...

    def give_back_soon(self, scope_key: str, rpm: int | None, tpm: int | None, requests: int, tokens: int) -> None: ...

    async def flush(self) -> None: ...


class _Allowance:
    """What this worker took from one limit's shared bucket and has not used yet."""

    __slots__ = ("size", "token_size", "requests", "tokens", "until", "r_left", "t_left", "r_state", "t_state")

    def __init__(self, requests: int, tokens: int, until: float, decision: RateDecision) -> None:
        self.size = requests
        self.token_size = tokens
        self.requests = requests  # left to admit
        self.tokens = tokens
        self.until = until
        r, t = decision.requests, decision.tokens
        self.r_state, self.t_state = r, t
        self.r_left = r.remaining if r is not None else 0  # what the bucket had left after the take
        self.t_left = t.remaining if t is not None else 0


class _Demand:
    __slots__ = ("requests", "tokens", "since", "remaining_r", "remaining_t", "asked")

    def __init__(self, now: float) -> None:
        self.requests = 0
        self.tokens = 0
        self.since = now
        self.remaining_r: int | None = None  # what the bucket had left at its last answer
        self.remaining_t: int | None = None
        self.asked = False  # a top-up is under way


class LeasedRateLimitStore:
    """``RateLimitStore`` over the shared ``inner``, admitting against allowances (see the module
    docstring). ``clock`` is monotonic seconds."""

    def __init__(self, inner: AllotingBackend, *, clock: Clock = time.monotonic, logger: Any = None) -> None:
        self.inner = inner
        self._clock = clock
        self._allowances: dict[Limit, _Allowance] = {}
        self._by_tokens: dict[tuple[str, int], Limit] = {}  # (scope key, tpm) -> its limit, while it has an allowance
        self._demand: dict[Limit, _Demand] = {}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._logger = logger or structlog.get_logger("mux.stores")

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        try:
            for limit in list(self._allowances):
                self._give_back(limit)
        finally:
            await self.inner.close()

    async def __aenter__(self) -> LeasedRateLimitStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def acquire(self, scope_key: str, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        return (await self.acquire_all([(scope_key, rpm, tpm)], tokens))[0]

    def acquire_all_nowait(self, limits: Sequence[Limit], tokens: int) -> list[RateDecision] | None:
        """Answer ``acquire_all`` at once when the allowances of all ``limits`` admit the request (taking from
        them), else None, taking nothing: then ``acquire_all`` decides."""
        now = self._clock()
        found = []
        for limit in limits:
            allowance = self._allowances.get(limit)
            if (
                allowance is None
                or now >= allowance.until
                or limit[1] is not None
                and allowance.requests < 1
                or limit[2] is not None
                and allowance.tokens < tokens
            ):
                return None
            found.append(allowance)
        return self._take_from(limits, found, tokens, now)

    def _take_from(
        self, limits: Sequence[Limit], found: list[_Allowance], tokens: int, now: float
    ) -> list[RateDecision]:
        out = []
        for limit, allowance in zip(limits, found, strict=True):
            allowance.requests -= 1
            allowance.tokens -= tokens
            out.append(_decision(allowance))
            self._count(limit, tokens, now)
            if 4 * allowance.requests < allowance.size or 4 * allowance.tokens < allowance.token_size:
                self._wake.set()
        return out

    async def acquire_all(self, limits: Sequence[Limit], tokens: int) -> list[RateDecision]:
        answer = self.acquire_all_nowait(limits, tokens)
        if answer is not None:
            return answer
        now = self._clock()
        for _, rpm, tpm in limits:
            check(rpm, tpm, tokens)
        decisions = await self.inner.acquire_all(limits, tokens)
        for limit, decision in zip(limits, decisions, strict=False):
            demand = self._count(limit, tokens, now)
            r, t = decision.requests, decision.tokens
            demand.remaining_r = r.remaining if r is not None else None
            demand.remaining_t = t.remaining if t is not None else None
        if decisions[-1].admitted:
            self._top_up_soon()
            self._wake.set()
        return decisions

    def _count(self, limit: Limit, tokens: int, now: float) -> _Demand:
        demand = self._demand.get(limit)
        if demand is None:
            demand = self._demand[limit] = _Demand(now)
        demand.requests += 1
        demand.tokens += tokens
        return demand

    async def correct(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        await self.inner.correct(scope_key, tpm, token_delta)

    def correct_soon(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        """A correction goes to the limit's allowance when there is one and it covers the correction (a refund
        is given back with what is left of it, within ``VALID_S``); to the shared bucket otherwise."""
        limit = self._by_tokens.get((scope_key, tpm)) if tpm is not None else None
        allowance = self._allowances.get(limit) if limit is not None else None
        if allowance is not None and allowance.tokens >= token_delta and self._clock() < allowance.until:
            allowance.tokens -= token_delta
            demand = self._demand.get(limit) if token_delta > 0 else None  # type: ignore[arg-type]
            if demand is not None:
                demand.tokens += token_delta  # the next allowance asks for the tokens really used
            return
        self.inner.correct_soon(scope_key, tpm, token_delta)

    async def flush(self) -> None:
        await self.inner.flush()

    # ---- allowances ----

    def _top_up_soon(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._allotting())

    async def _allotting(self) -> None:
        """Give back lapsed allowances and take new ones for the limits in demand, every ``VALID_S / 4``
        (the first at once); ends when no limit is in demand."""
        try:
            while self._demand or self._allowances:
                now = self._clock()
                for limit, held in list(self._allowances.items()):
                    if now >= held.until:
                        self._give_back(limit)
                for limit, demand in list(self._demand.items()):
                    allowance = self._allowances.get(limit)
                    low = (
                        allowance is None
                        or 4 * allowance.requests < allowance.size
                        or limit[2] is not None
                        and 4 * allowance.tokens < allowance.token_size
                    )
                    if low and demand.requests:
                        await self._take(limit, demand, now)
                    elif not demand.requests and allowance is None and now - demand.since > VALID_S:
                        del self._demand[limit]
                try:
                    await asyncio.wait_for(self._wake.wait(), VALID_S / 4)
                except TimeoutError:
                    pass
                self._wake.clear()
        except Exception as exc:  # noqa: BLE001 - the shared bucket answers until the next start
            self._logger.warning("rate_limit_allowance_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _take(self, limit: Limit, demand: _Demand, now: float) -> None:
        n, m = allowance_size(demand, now)
        scope_key, rpm, tpm = limit
        if n < LEAST or tpm is not None and m < LEAST * demand.tokens / max(demand.requests, 1):
            demand.requests = demand.tokens = 0
            demand.since = now
            return  # near the limit: every request goes to the shared bucket
        # the allowance held keeps admitting while the next one is taken; what is left of it is given back then
        decision = await self.inner.acquire(scope_key, rpm, tpm, m if tpm is not None else 0, n)
        demand.requests = demand.tokens = 0
        demand.since = now
        if decision.admitted:
            self._give_back(limit)
            self._allowances[limit] = _Allowance(n, m, self._clock() + VALID_S, decision)
            if tpm is not None:
                self._by_tokens[(scope_key, tpm)] = limit
        r, t = decision.requests, decision.tokens
        demand.remaining_r = r.remaining if r is not None else None
        demand.remaining_t = t.remaining if t is not None else None

    def _give_back(self, limit: Limit) -> None:
        allowance = self._allowances.pop(limit, None)
        if limit[2] is not None and self._by_tokens.get((limit[0], limit[2])) == limit:
            del self._by_tokens[(limit[0], limit[2])]
        if allowance is not None and (allowance.requests > 0 or allowance.tokens > 0):
            scope_key, rpm, tpm = limit
            try:
                self.inner.give_back_soon(scope_key, rpm, tpm, max(allowance.requests, 0), max(allowance.tokens, 0))
            except Exception as exc:  # noqa: BLE001 - unreturned, it drains away with the bucket
                self._logger.warning("rate_limit_give_back_failed", error=f"{type(exc).__name__}: {exc}")


def allowance_size(demand: _Demand, now: float) -> tuple[int, int]:
    """Answer the requests and tokens an allowance asks for: ``HORIZON_S`` of the demand seen since
    ``demand.since``, at most ``1/SHARE`` of what the bucket had left (pure)."""
    elapsed = max(now - demand.since, 0.05)
    n = int(demand.requests / elapsed * HORIZON_S) + 1
    m = int(demand.tokens / elapsed * HORIZON_S) + 1
    if demand.remaining_r is not None:
        n = min(n, demand.remaining_r // SHARE)
    if demand.remaining_t is not None:
        m = min(m, demand.remaining_t // SHARE)
    return n, m


def _decision(allowance: _Allowance) -> RateDecision:
    """The decision of a request admitted against ``allowance``."""
    r, t = allowance.r_state, allowance.t_state
    return RateDecision(
        True,
        LimitState(r.limit, allowance.r_left + allowance.requests, r.reset_s, 0.0, True) if r is not None else None,
        LimitState(t.limit, allowance.t_left + allowance.tokens, t.reset_s, 0.0, True) if t is not None else None,
    )
