"""The shared resources of one gateway, with a lifecycle: opened at lifespan startup, closed at shutdown.

``Resources`` owns the upstream transport, the live routing state (its version store), the key store with
its lookup cache (``keys``, when the config needs state) and whatever else the stack shares (ledger writer,
meters): each is registered under a name, opened in registration order and closed in reverse. With a
``ledger:`` section, the ledger store opens (and creates its schema) before its writer starts, and at shutdown
the writer writes every queued row (``ledger.shutdown_timeout_s`` at most) before the store closes. A resource
that fails to open stops startup with a message naming it (the ones already open are closed again); a failure
while closing is reported and the others still close. Layers and handlers receive the resources they need
injected; none reads env or globals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from mux.config import Config
from mux.engine.transport import AiohttpTransport, Transport
from mux.keys.cache import KeyCache
from mux.keys.spec import load_config_keys
from mux.routing.live import LiveRouting
from mux.routing.sync import RoutingSync
from mux.routing.versions import MemoryVersions, SQLiteVersions, Versions
from mux.stores.keys import KeyStore, key_store
from mux.stores.limits import limit_store
from mux.stores.ondemand import OnDemand
from mux.stores.spend import spend_store
from mux.stores.state_url import MemoryState, parse_state_url

if TYPE_CHECKING:
    from mux.config.schema import LedgerConfig
    from mux.ledger import LedgerWriter


class Resource(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...


class StartupError(Exception):
    """A resource could not be opened; the message names it and says why."""


class Resources:
    """The resources a gateway's layers and handlers share, and their lifecycle."""

    def __init__(
        self,
        config: Config,
        *,
        transport: Transport | None = None,
        versions: Versions | None = None,
        routing: LiveRouting | None = None,
        source: Callable[[], Config] | None = None,
        ledger: LedgerWriter | None = None,
        logger: Any = None,
    ) -> None:
        """``ledger`` replaces the writer ``config.ledger`` would build (its store is opened and closed here)."""
        self.config = config
        self.transport: Transport = transport if transport is not None else AiohttpTransport()
        self.routing = routing or LiveRouting(config, versions=versions or open_versions(config), source=source)
        self.sync = RoutingSync(self.routing, logger=logger)
        self.logger = logger or structlog.get_logger("mux.resources")
        self._named: list[tuple[str, Any]] = [("upstream transport", self.transport), ("routing state", self.sync)]
        self._open: list[tuple[str, Any]] = []
        self._opening: asyncio.Lock | None = None
        self.opened = False
        self.ledger: LedgerWriter | None = ledger or (open_ledger(config.ledger) if config.ledger else None)
        if self.ledger is not None:
            writer = self.ledger
            timeout = config.ledger.shutdown_timeout_s if config.ledger else None
            self.add("ledger store", Hooks(writer.store.open, writer.store.close))
            self.add("ledger writer", Hooks(_started(writer), partial(writer.aclose, timeout)))
        self.keys: Keys | None = None
        if needs_state(config):
            self.keys = self.add("key store", Keys(config, logger=self.logger))
            self.routing.on_reload(self.keys.reload)
        self._budget_state(config)

    # ---- budget and rate-limit state (BudgetLayer, RateLimitLayer) ----

    def _budget_state(self, config: Config) -> None:
        """The spend and rate-limit stores on the ``state`` backend, each opened when first needed: at startup
        when budgets (or rate limits) are configured, else by the first request a key's own limits apply to.
        Nothing is created or connected for a gateway that never counts. With ``memory`` state and a ledger,
        each budget counter starts from the ledger's spend (``mux.ledger.seed``)."""
        state = parse_state_url(config.state)
        prefix = config.state_prefix
        seed = None
        if self.ledger is not None and isinstance(state, MemoryState):  # the others keep their spend
            from mux.ledger.seed import LedgerSeed

            seed = LedgerSeed(self.ledger)
        self.spend = self.add(
            "budget state",
            OnDemand(
                spend_store(state, prefix=prefix, seed=seed),
                name="budget state",
                eager=bool(config.budgets),
                logger=self.logger,
            ),
        )
        self.limits = self.add(
            "rate-limit state",
            OnDemand(
                limit_store(state, prefix=prefix),
                name="rate-limit state",
                eager=bool(config.rate_limits),
                logger=self.logger,
            ),
        )

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


class Hooks:
    """A resource made of two coroutine functions (for objects whose lifecycle methods have other names)."""

    def __init__(self, open: Callable[[], Awaitable[None]], aclose: Callable[[], Awaitable[None]]) -> None:
        self.open = open
        self.aclose = aclose


def _started(writer: LedgerWriter) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        writer.start()  # on the serving loop: the flusher is a task of it

    return start


def open_ledger(config: LedgerConfig) -> LedgerWriter:
    """The (unstarted) ledger writer over the (unopened) store the ``ledger:`` section names."""
    from mux.ledger import LedgerWriter, store_from_url

    store = store_from_url(config.store, schema=config.schema)
    return LedgerWriter(
        store,
        batch_rows=config.batch_rows,
        flush_ms=config.flush_ms,
        max_queue=config.max_queue,
        store_bodies=config.store_bodies,
    )


def needs_state(config: Config) -> bool:
    """Whether the config needs its ``state`` store: keys configured, or an admin token (which can make keys).
    A plain config opens nothing, so it creates no file. Whatever else comes to live in the state (budgets,
    rate limits) belongs here too: the stack holds AuthLayer, the writer of ``ctx.key``, exactly when this
    is true."""
    return bool(config.keys) or bool(config.server.admin_token)


class Keys:
    """The key store named by ``config.state`` and the ``KeyCache`` in front of it, as one resource: opening
    it opens the store and makes it hold exactly the config's keys (``load_config_keys``)."""

    def __init__(self, config: Config, *, store: KeyStore | None = None, logger: Any = None) -> None:
        self.store = store or key_store(config.state, prefix=f"{config.state_prefix}{{keys}}:")
        self.secret = config.server.key_secret
        self.cache = KeyCache(self.store, secret=self.secret)
        self.specs = list(config.keys)
        self.logger = logger or structlog.get_logger("mux.resources")
        self._opened = False

    async def open(self) -> None:
        await self.store.open()
        try:
            await self._load()
        except BaseException:
            await self.store.close()
            raise
        self._opened = True

    async def reload(self, config: Config) -> None:
        """Make the store hold exactly the keys of a reloaded ``config`` (new, changed and removed config keys
        take effect at once in this process, and within the cache's bound in the others); keys made through
        the admin API are left alone. Before the store is open, the new keys are only remembered."""
        self.specs = list(config.keys)
        if self._opened:
            await self._load()

    async def _load(self) -> None:
        loaded = await load_config_keys(self.store, self.specs, secret=self.secret)
        self.cache.clear()
        if loaded["put"] or loaded["deleted"]:
            self.logger.info("config_keys_loaded", put=loaded["put"], deleted=loaded["deleted"])

    async def aclose(self) -> None:
        self._opened = False
        await self.store.close()


def open_versions(config: Config) -> Versions:
    """The route-version store the config names: a SQLite file, or this process's memory."""
    return SQLiteVersions(config.server.state_path) if config.server.state_path else MemoryVersions()
