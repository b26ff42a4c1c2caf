"""The rate-limit store: requests and tokens per minute per scope, GCRA (``mux.money.gcra``), behind a Protocol.

``acquire`` checks both limits of a scope atomically and takes from both only when both admit; tokens are
the request's estimate, and ``correct`` adds the difference once the real usage is known (negative refunds,
positive is debt the next requests wait for). A decision carries, per limit, what OpenAI's rate-limit
headers need: ``x-ratelimit-limit-*`` (``limit``), ``x-ratelimit-remaining-*`` (``remaining``),
``x-ratelimit-reset-*`` (``reset_s``) and ``Retry-After`` (``retry_after_s``).

Backends: ``MemoryRateLimitStore`` (one process), ``SqliteRateLimitStore`` (the workers of one machine),
``RedisRateLimitStore`` (replicas; one Lua script per call on the server's clock). ``limit_store`` puts the
shared two behind allowances (``mux.stores.limits.lease``): each worker admits against a few requests' worth
taken from the shared bucket ahead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from msgspec import Struct

from mux.money.gcra import NEVER, Verdict
from mux.stores.state_url import MemoryState, RedisState, SqliteState, StateURL

Clock = Callable[[], float]
Limit = tuple[str, int | None, int | None]  # scope_key, rpm, tpm


class LimitState(Struct, gc=False):
    """One limit after an ``acquire``."""

    limit: int
    remaining: int  # what would still be admitted now (requests, or tokens)
    reset_s: float  # until the limit is back to its full burst
    retry_after_s: float  # 0 when this limit admits; math.inf when the cost is larger than the limit
    admitted: bool  # whether this limit alone admits


class RateDecision(Struct, gc=False):
    """The answer to ``acquire``: admitted only if every configured limit admits (None: not configured)."""

    admitted: bool
    requests: LimitState | None = None
    tokens: LimitState | None = None

    @property
    def retry_after_s(self) -> float:
        """The wait before the refused request would fit (0 when admitted; math.inf when it never will)."""
        waits = [s.retry_after_s for s in (self.requests, self.tokens) if s is not None and not s.admitted]
        return max(waits) if waits else 0.0


class RateLimitStore(Protocol):
    """Rate-limit state; see the module docstring."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(self, scope_key: str, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        """Take one request and ``tokens`` from ``scope_key``'s limits if both fit, atomically."""
        ...

    async def correct(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        """Add ``token_delta`` (real minus estimated tokens) to ``scope_key``'s token limit."""
        ...

    async def acquire_all(self, limits: Sequence[Limit], tokens: int) -> list[RateDecision]:
        """``acquire`` each of ``limits`` (``(scope_key, rpm, tpm)``) in order up to the first that refuses, and
        give back the tokens the earlier ones took (their request counts stay taken); answer the decisions made,
        the refusing one last."""
        ...

    def correct_soon(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        """``correct`` within a few ms, off the caller's path: queued and run in a batch
        (``mux.stores.deferred``)."""
        ...

    async def flush(self) -> None:
        """Run the queued corrections now."""
        ...


def limit_store(state: StateURL, *, clock: Clock | None = None, prefix: str = "mux:") -> RateLimitStore:
    """Answer an unopened rate-limit store for ``state`` (``clock`` defaults to ``time.time``; Redis uses the
    server's clock unless one is given)."""
    if isinstance(state, MemoryState):
        from mux.stores.limits.memory import MemoryRateLimitStore

        return MemoryRateLimitStore(clock=clock or time.time)
    from mux.stores.limits.lease import LeasedRateLimitStore

    if isinstance(state, SqliteState):
        from mux.stores.limits.sqlite import SqliteRateLimitStore

        return LeasedRateLimitStore(SqliteRateLimitStore(state.path, clock=clock or time.time))
    if isinstance(state, RedisState):
        from mux.stores.limits.redis import RedisRateLimitStore

        return LeasedRateLimitStore(RedisRateLimitStore(state.url(), clock=clock, prefix=prefix))
    raise TypeError(f"not a state: {type(state).__name__}")


# ---- shared by the backends ----------------------------------------------------------------------------

UNLIMITED = RateDecision(True)


def check(rpm: int | None, tpm: int | None, tokens: int) -> None:
    """Refuse limits that are not positive and a negative token count."""
    if (rpm is not None and rpm <= 0) or (tpm is not None and tpm <= 0):
        raise ValueError("a rate limit must be a positive number per minute (or None)")
    if tokens < 0:
        raise ValueError("a token count cannot be negative")


def limit_state(limit: int, remaining: int, reset_us: int, retry_us: int, admitted: bool) -> LimitState:
    """Answer a ``LimitState`` from a verdict's integers (µs; ``NEVER`` for a cost that never fits)."""
    retry = math.inf if retry_us == NEVER else retry_us / 1e6
    return LimitState(limit, remaining, reset_us / 1e6, retry, admitted)


def state_of(limit: int | None, v: Verdict | None) -> LimitState | None:
    """Answer the ``LimitState`` of a pure ``Verdict`` (None when the limit is not configured)."""
    if limit is None or v is None:
        return None
    return limit_state(limit, v.remaining, v.reset_us, v.retry_after_us, v.admitted)


def drain_time_us(level: int, limit: int) -> int:
    """Answer how long a bucket at ``level`` takes to empty under ``limit`` (when its state can be dropped)."""
    return -(-level // limit)


def acquire_each(
    acquire: Callable[[str, int | None, int | None, int], RateDecision],
    correct_soon: Callable[[str, int | None, int], None],
    limits: Sequence[Limit],
    tokens: int,
) -> list[RateDecision]:
    """``acquire_all`` as one ``acquire`` after another, for a store whose ``acquire`` answers without I/O:
    up to the first refusal, then the earlier limits' tokens given back (``correct_soon``)."""
    out: list[RateDecision] = []
    for scope_key, rpm, tpm in limits:
        decision = acquire(scope_key, rpm, tpm, tokens)
        out.append(decision)
        if not decision.admitted:
            for key, _, earlier_tpm in limits[: len(out) - 1]:
                correct_soon(key, earlier_tpm, -tokens)
            break
    return out
