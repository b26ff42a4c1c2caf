"""The routing state every request reads, swapped whole on reload so in-flight requests keep what they had.

``LiveRouting`` owns the config in force, its resolver and router, the route versions, and the shared health
(kept across reloads: a reload does not forget that a provider is failing).
"""

from __future__ import annotations

from typing import Callable

import msgspec

from mux.catalog.models import CAPABILITIES, Catalog, ModelInfo
from mux.config import Config, ConfigError, validated
from mux.routing.health import Health
from mux.catalog.prices import PRICES, Price
from mux.routing.plan import Resolver, Router, RouteVersion, route_versions
from mux.routing.versions import MemoryVersions, Versions


class LiveRouting:
    def __init__(self, config: Config, *, versions: Versions | None = None, health: Health | None = None,
                 prices: dict[str, Price] = PRICES, capabilities: dict[str, ModelInfo] = CAPABILITIES,
                 source: Callable[[], Config] | None = None) -> None:
        """``source`` re-reads the configuration for ``reload()`` (e.g. the YAML file the gateway started from)."""
        self.versions = versions or MemoryVersions()
        self.health = health or Health(config.health)
        self.prices = prices
        self.capabilities = capabilities
        self.source = source
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

    def _router(self, config: Config) -> Router:
        # assigning is idempotent by content: unchanged routes keep their version numbers
        served = route_versions(config, self.versions.assign)
        catalog = Catalog(config.catalog, capabilities=self.capabilities, prices=self.prices)
        return Router(config, Resolver(config), served, self.health, catalog=catalog)

    def reload(self, config: Config | None = None) -> dict[str, int]:
        """Serve ``config`` (or a fresh read of the source) from the next request on; answer the route versions.

        Raises ``ConfigError`` and keeps serving the old config if the new one is bad."""
        if config is None:
            if self.source is None:
                raise ConfigError("this gateway has no config source to reload from")
            config = self.source()
        self.router = self._router(config)
        return {name: served.version for name, served in self.routes.items()}

    def rollback(self, name: str, version: int) -> RouteVersion:
        """Serve an earlier recorded version of route ``name`` from the next request on."""
        if name not in self.routes:
            raise ConfigError(f"no route named '{name}' is served")
        record = self.versions.get(name, version)
        if record is None:
            raise ConfigError(f"route '{name}' has no version {version}")
        routes = {**self.config.routes, name: record.config}
        self.router = self._router(validated(msgspec.structs.replace(self.config, routes=routes)))
        return self.routes[name]
