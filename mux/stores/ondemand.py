"""A store opened when something first needs it, and opened again after its backend comes back.

``OnDemand(store)`` answers every call of the store it wraps (a ``SpendStore``, a ``RateLimitStore``), opening
it first if needed: a gateway with no budget, no rate limit and no key with limits never creates its SQLite
file or connects to Redis. A failed open raises ``StoreUnavailable``, and for ``retry_s`` (1 s) the next calls
raise the same error at once instead of waiting on a dead server again; then one call tries again.

As a resource (``mux.resources``): ``open()`` at startup opens the store when ``eager`` (budgets or limits are
configured), but an unreachable backend does not stop startup — it is logged, and each layer answers as it
documents (budgets fail closed, rate limits open) until the backend answers; ``aclose()`` closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from mux.stores import StoreUnavailable

RETRY_S = 1.0


class OnDemand:
    """The store ``store``, opened on first use; answers the calls of ``SpendStore`` and ``RateLimitStore``."""

    def __init__(
        self,
        store: Any,
        *,
        name: str,
        eager: bool = False,
        retry_s: float = RETRY_S,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.name = name
        self.eager = eager
        self.retry_s = retry_s
        self.logger = logger or structlog.get_logger("mux.state")
        self._clock = clock
        self._open = False
        self._failure: tuple[float, StoreUnavailable] | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def opened(self) -> bool:
        return self._open

    async def ensure(self) -> Any:
        """Answer the opened store; raise ``StoreUnavailable`` naming the cause when it cannot be opened."""
        if self._open:
            return self.store
        failure = self._failure
        if failure is not None and self._clock() - failure[0] < self.retry_s:
            raise failure[1]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._open:
                failure = self._failure
                if failure is not None and self._clock() - failure[0] < self.retry_s:
                    raise failure[1]
                try:
                    await self.store.open()
                except StoreUnavailable as exc:
                    self._failure = (self._clock(), exc)
                    raise
                except OSError as exc:
                    error = StoreUnavailable(f"cannot open the {self.name}: {exc}")
                    self._failure = (self._clock(), error)
                    raise error from None
                self._open, self._failure = True, None
                self._bind()
        return self.store

    _DIRECT = (
        "reserve",
        "reserve_nowait",
        "settle",
        "release",
        "finish_soon",
        "usage",
        "acquire",
        "acquire_all",
        "acquire_all_nowait",
        "correct_soon",
    )

    def _bind(self) -> None:
        """Once the store is open, its own methods answer the calls on the request path (as instance
        attributes, shadowing the wrappers below): no wrapper call per request. ``aclose`` unbinds them."""
        for name in self._DIRECT:
            method = getattr(self.store, name, None)
            if method is not None:
                setattr(self, name, method)

    def _unbind(self) -> None:
        for name in self._DIRECT:
            self.__dict__.pop(name, None)

    def _call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Awaitable[Any]:
        """Answer the awaitable of the store's ``name(*args, **kwargs)``: the store's own once it is open (no
        coroutine frame of this wrapper stays in the request's await chain), else one that opens it first."""
        if self._open:
            return getattr(self.store, name)(*args, **kwargs)
        return self._opening_call(name, args, kwargs)

    async def _opening_call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return await getattr(await self.ensure(), name)(*args, **kwargs)

    # ---- SpendStore ----

    def reserve(self, *args: Any) -> Awaitable[Any]:
        return self._call("reserve", args, {})

    def reserve_nowait(self, *args: Any) -> Any:
        """None: answered at once only by an open store that can (a leasing one); then bound to it."""
        return None

    def settle(self, *args: Any) -> Awaitable[Any]:
        return self._call("settle", args, {})

    def release(self, *args: Any) -> Awaitable[Any]:
        return self._call("release", args, {})

    def finish_soon(self, *args: Any) -> None:
        self._opened().finish_soon(*args)

    async def flush(self) -> None:
        if self._open:
            await self.store.flush()

    def usage(self, *args: Any) -> Awaitable[Any]:
        return self._call("usage", args, {})

    def add_spend(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self._call("add_spend", args, kwargs)

    # ---- RateLimitStore ----

    def acquire(self, *args: Any) -> Awaitable[Any]:
        return self._call("acquire", args, {})

    def acquire_all(self, *args: Any) -> Awaitable[Any]:
        return self._call("acquire_all", args, {})

    def acquire_all_nowait(self, *args: Any) -> Any:
        """None: answered at once only by an open store that can (one with allowances); then bound to it."""
        return None

    def correct(self, *args: Any) -> Awaitable[Any]:
        return self._call("correct", args, {})

    def correct_soon(self, *args: Any) -> None:
        self._opened().correct_soon(*args)

    def _opened(self) -> Any:
        """Answer the store when open (a queued write needs no open: its reservation or bucket went through
        it); raise StoreUnavailable otherwise."""
        if not self._open:
            raise StoreUnavailable(f"the {self.name} is not open")
        return self.store

    # ---- the resource lifecycle ----

    async def open(self) -> None:
        if not self.eager:
            return
        try:
            await self.ensure()
        except StoreUnavailable as exc:
            self.logger.warning("state_unavailable", store=self.name, error=str(exc))

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._unbind()
            await self.store.close()

    close = aclose
