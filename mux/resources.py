"""The shared resources of one gateway, with a lifecycle: opened at lifespan startup, closed at shutdown.

``Resources`` owns the upstream transport, the live routing state (its version store) and whatever else the
stack shares (state stores, ledger writer, meters): each is registered under a name, opened in registration
order and closed in reverse. A resource that fails to open stops startup with a message naming it (the ones
already open are closed again); a failure while closing is reported and the others still close. Layers and
handlers receive the resources they need injected; none reads env or globals.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol

import structlog

from mux.config import Config
from mux.engine.transport import AiohttpTransport, Transport
from mux.routing.live import LiveRouting
from mux.routing.sync import RoutingSync
from mux.routing.versions import MemoryVersions, SQLiteVersions, Versions
from mux.stores.limits import limit_store
from mux.stores.ondemand import OnDemand
from mux.stores.spend import spend_store
from mux.stores.state_url import parse_state_url


class Resource(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...


class StartupError(Exception):
    """A resource could not be opened; the message names it and says why."""


class Resources:
    """The resources a gateway's layers and handlers share, and their lifecycle."""

    def __init__(self, config: Config, *, transport: Transport | None = None, versions: Versions | None = None,
                 routing: LiveRouting | None = None, source: Callable[[], Config] | None = None,
                 logger: Any = None) -> None:
        self.config = config
        self.transport: Transport = transport or AiohttpTransport()
        self.routing = routing or LiveRouting(config, versions=versions or open_versions(config), source=source)
        self.sync = RoutingSync(self.routing, logger=logger)
        self.logger = logger or structlog.get_logger("mux.resources")
        self._named: list[tuple[str, Any]] = [("upstream transport", self.transport), ("routing state", self.sync)]
        self._open: list[tuple[str, Any]] = []
        self._opening: asyncio.Lock | None = None
        self.opened = False
        self._budget_state(config)

    # ---- budget and rate-limit state (BudgetLayer, RateLimitLayer) ----

    def _budget_state(self, config: Config) -> None:
        """The spend and rate-limit stores on the ``state`` backend, each opened when first needed: at startup
        when budgets (or rate limits) are configured, else by the first request a key's own limits apply to.
        Nothing is created or connected for a gateway that never counts."""
        state = parse_state_url(config.state)
        prefix = config.state_prefix
        self.spend = self.add("budget state", OnDemand(spend_store(state, prefix=prefix), name="budget state",
                                                       eager=bool(config.budgets), logger=self.logger))
        self.limits = self.add("rate-limit state", OnDemand(limit_store(state, prefix=prefix), name="rate-limit state",
                                                            eager=bool(config.rate_limits), logger=self.logger))

    def add(self, name: str, resource: Any) -> Any:
        """Register ``resource`` (anything with ``open``/``aclose``; either may be absent) and answer it."""
        if self.opened:
            raise RuntimeError(f"resource '{name}' added after the resources were opened")
        self._named.append((name, resource))
        return resource

    async def open(self) -> None:
        """Open every resource in order (at most once); raise ``StartupError`` naming the one that failed."""
        if self.opened:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.opened:
                return
            for name, resource in self._named:
                opener = getattr(resource, "open", None)
                try:
                    if opener is not None:
                        await opener()
                except Exception as exc:  # noqa: BLE001 - reported as a startup failure naming the resource
                    await self._close_opened()
                    raise StartupError(f"mux could not open its {name}: {type(exc).__name__}: {exc}") from exc
                self._open.append((name, resource))
            self.opened = True

    async def aclose(self) -> list[str]:
        """Close every opened resource in reverse order; answer the failures (each also logged)."""
        failures = await self._close_opened()
        self.opened = False
        return failures

    async def _close_opened(self) -> list[str]:
        failures = []
        while self._open:
            name, resource = self._open.pop()
            closer = getattr(resource, "aclose", None)
            if closer is None:
                continue
            try:
                await closer()
            except Exception as exc:  # noqa: BLE001 - one failing close must not keep the others open
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                self.logger.error("resource_close_failed", resource=name, error=f"{type(exc).__name__}: {exc}")
        return failures


def open_versions(config: Config) -> Versions:
    """The route-version store the config names: a SQLite file, or this process's memory."""
    return SQLiteVersions(config.server.state_path) if config.server.state_path else MemoryVersions()
