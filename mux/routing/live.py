"""The routing state every request reads, swapped whole on reload so in-flight requests keep what they had.

``LiveRouting`` owns the config in force, its resolver and router, the route versions, and the shared health
(kept across reloads: a reload does not forget that a provider is failing).

What is served is the config source (as last read) with the recorded rollbacks applied. Reloads and
rollbacks are recorded in the version store (``Served``); when the store is shared with other processes
(the workers of one gateway, through one SQLite file), ``sync()`` brings this process to what another one
recorded. Requests only read ``router``; reload, rollback and sync serialize on a lock and may block on the
store and the source, so an event loop calls them in a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from mux.catalog.models import CAPABILITIES, Catalog, ModelInfo
from mux.catalog.prices import PRICES, Price
from mux.config import Config, ConfigError, validated
from mux.routing.health import Health
from mux.routing.plan import Resolver, Router, RouteVersion, route_versions
from mux.routing.versions import MemoryVersions, Served, Versions


class LiveRouting:
    def __init__(
        self,
        config: Config,
        *,
        versions: Versions | None = None,
        health: Health | None = None,
        prices: dict[str, Price] = PRICES,
        capabilities: dict[str, ModelInfo] = CAPABILITIES,
        source: Callable[[], Config] | None = None,
    ) -> None:
        """``source`` re-reads the configuration for ``reload()`` (e.g. the YAML file the gateway started from).

        ``config`` is served with the rollbacks the store records (none that no longer fit it)."""
        self.versions = versions or MemoryVersions()
        self.health = health or Health(config.health)
        self._hooks: list[Callable[[Config], Awaitable[None]]] = []
        self.prices = prices
        self.capabilities = capabilities
        self.source = source
        self._lock = threading.Lock()
        served = self.versions.served()
        self.base = config  # the config as read from the source, before rollbacks
        self.generation, self.reloaded = served.generation, served.reload
        try:
            self.router = self._router(self._pinned(config, served.pins))
        except ConfigError:
            self.router = self._router(config)

    @property
    def config(self) -> Config:
        return self.router.config

    @property
    def catalog(self) -> Catalog:
        return self.router.catalog

    @property
    def resolver(self) -> Resolver:
        return self.router.resolver

    @property
    def routes(self) -> dict[str, RouteVersion]:
        return self.router.routes

    @property
    def shared(self) -> bool:
        """Whether other processes may change what this one should serve (then call ``sync()`` now and then)."""
        return getattr(self.versions, "shared", False)

    def _router(self, config: Config) -> Router:
        # assigning is idempotent by content: unchanged routes keep their version numbers
        served = route_versions(config, self.versions.assign)
        catalog = Catalog(config.catalog, capabilities=self.capabilities, prices=self.prices)
        return Router(config, Resolver(config), served, self.health, catalog=catalog)

    def _read(self) -> Config:
        if self.source is None:
            raise ConfigError("this gateway has no config source to reload from")
        return self.source()

    def _pinned(self, base: Config, pins: dict[str, int]) -> Config:
        """Answer ``base`` with each rolled-back route replaced by its recorded version (routes ``base`` no
        longer has are skipped); raise ``ConfigError`` if the result is not a valid config."""
        routes = dict(base.routes)
        for name, version in pins.items():
            record = self.versions.get(name, version) if name in routes else None
            if record is not None:
                routes[name] = record.config
        if routes == base.routes:
            return base
        return validated(msgspec.structs.replace(base, routes=routes))

    def _serve(self, served: Served, fresh: Config | None = None) -> None:
        """Serve what ``served`` records: the source (``fresh``, or read again if another process reloaded
        since this one last did) with its rollbacks."""
        base = self.base
        if fresh is not None:
            base = fresh
        elif served.reload != self.reloaded and self.source is not None:
            base = self._read()
        self.router = self._router(self._pinned(base, served.pins))
        self.health.configure(base.health)  # the breakers keep their state under the new settings
        self.base, self.generation, self.reloaded = base, served.generation, served.reload

    def reload(self, config: Config | None = None) -> dict[str, int]:
        """Serve ``config`` (or a fresh read of the source) from the next request on, in every process sharing
        the store; answer the route versions.

        Raises ``ConfigError`` and keeps serving the old config if the new one is bad."""
        with self._lock:
            if config is None:
                config = self._read()  # a bad source raises here, before anything is recorded
            self._serve(self.versions.record_reload(), fresh=config)
            return {name: served.version for name, served in self.routes.items()}

    def on_reload(self, hook: Callable[[Config], Awaitable[None]]) -> None:
        """Have ``hook(config)`` run (by ``after_reload``) after each reload of the source, with the config read."""
        self._hooks.append(hook)

    async def after_reload(self, logger: Any) -> None:
        """Run the reload hooks with the config now served from the source (on the event loop; a reloader
        awaits this after ``reload()`` succeeded); a hook that fails is logged (``reload_hook_failed``) and
        the others still run."""
        for hook in self._hooks:
            try:
                await hook(self.base)
            except Exception as exc:  # noqa: BLE001 - reported; the reload itself stands
                logger.error("reload_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)), error=str(exc))

    def rollback(self, name: str, version: int) -> RouteVersion:
        """Serve an earlier recorded version of route ``name`` from the next request on, in every process
        sharing the store, until the next reload."""
        with self._lock:
            if name not in self.routes:
                raise ConfigError(f"no route named '{name}' is served")
            record = self.versions.get(name, version)
            if record is None:
                raise ConfigError(f"route '{name}' has no version {version}")
            validated(msgspec.structs.replace(self.config, routes={**self.config.routes, name: record.config}))
            self._serve(self.versions.record_rollback(name, version))
            return self.routes[name]

    def sync(self) -> bool:
        """Serve what another process recorded, if anything changed since this one last looked; answer whether
        it did. Raises ``ConfigError`` (once per change) if the source or a rollback cannot be served; the
        old config keeps serving."""
        with self._lock:
            served = self.versions.served()
            if served.generation == self.generation:
                return False
            self.generation = served.generation  # seen: a change that cannot be served is reported once
            self._serve(served)
            return True
