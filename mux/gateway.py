"""Assembling the gateway: the ordered layer stack, its field check, and the app around shared resources.

The order, outermost first, and why each pair is in its order:

- ErrorLayer before everything, so a bug in any layer still answers an OpenAI-shaped 500.
- TraceLayer next, so every response (denials included) carries a request id and leaves a record.
- (AuthLayer) before TagsLayer: an unauthenticated request gets no further than a 401.
- TagsLayer before rate limits, budgets and cache, which key on the end user and tags it writes.
- (RateLimitLayer, BudgetLayer) before CacheLayer: a cached answer still counts against a request rate,
  and (by choice) a cache hit spends nothing because the budget settles the real upstream cost.
- RouterLayer last: the plan is only made for requests that will be dispatched.
- Dispatch, the terminal handler, executes the plan.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Callable, Coroutine

import structlog

from .asgi import API_PREFIXES, ASGIApp, Message, Receive, Scope, Send
from .config import Config
from .dispatch import Dispatch
from .embeddings import Embeddings
from .endpoints import Endpoints
from .layers import ErrorLayer, RouterLayer, TagsLayer, TraceLayer
from .live import LiveRouting
from .transport import AiohttpTransport, Transport
from .versions import MemoryVersions, SQLiteVersions, Versions

Layer = tuple[type, dict[str, Any]]


class StackError(Exception):
    """The layer order leaves some layer reading a context field that nothing outside it writes."""


def stack(config: Config, *, routing: LiveRouting | None = None, logger: Any = None,
          prefixes: tuple[str, ...] | None = None) -> list[Layer]:
    """Answer the default layers, outermost first, each as ``(LayerClass, options)``."""
    routing = routing or LiveRouting(config)
    limit = config.server.max_body_bytes
    return [
        (ErrorLayer, {"logger": logger}),
        (TraceLayer, {"logger": logger, "prefixes": prefixes}),
        (TagsLayer, {"max_body_bytes": limit}),
        (RouterLayer, {"routing": routing, "max_body_bytes": limit}),
    ]


# Fields any layer may produce by decoding the body on first use (see mux.context.request_of).
_DERIVED = frozenset({"body", "request", "fields", "trace"})


def check_stack(layers: list[Layer], terminal: Any = Dispatch) -> None:
    """Raise ``StackError`` if a layer (or the terminal) reads a context field that no layer outside it writes.

    A layer's ``reads`` are what it needs before calling inward; what it reads only after the inner app
    answered (``reads_after``, e.g. the outcome for a log record) may be written by layers inside it."""
    written = set(_DERIVED)
    for cls, _ in layers:
        missing = set(getattr(cls, "reads", ())) - written
        if missing:
            raise StackError(f"{cls.__name__} reads {sorted(missing)}, which no layer outside it writes")
        written |= set(getattr(cls, "writes", ()))
    missing = set(getattr(terminal, "reads", ())) - written
    if missing:
        raise StackError(f"{getattr(terminal, '__name__', terminal)} reads {sorted(missing)}, which no layer writes")


def compose(layers: list[Layer], inner: ASGIApp) -> ASGIApp:
    """Wrap ``inner`` in ``layers`` (outermost first)."""
    app = inner
    for cls, options in reversed(layers):
        app = cls(app, **{k: v for k, v in options.items() if v is not None})
    return app


class Gateway:
    """The composed app plus the resources it owns. ``routing`` is the live routing state
    (``routing.reload()``, ``routing.rollback()``).

    The gateway starts at lifespan startup (or on its first request, when the server runs no lifespan): it
    installs the signal handlers asked for with ``reload_on`` on the event loop, and, when the routing state
    is shared with other processes (a SQLite ``state_path``), checks it every ``sync_interval_s`` in a thread,
    so a reload or rollback made in another worker is served here too. At lifespan shutdown it stops both and
    closes the upstream transport. Requests pay one attribute check for this."""

    def __init__(self, app: ASGIApp, *, routing: LiveRouting, transport: Transport, logger: Any = None,
                 sync_interval_s: float = 0.25) -> None:
        self.app = app
        self.routing = routing
        self.transport = transport
        self.logger = logger or structlog.get_logger("mux.admin")
        self.sync_interval_s = sync_interval_s
        self._signals: set[int] = set()
        self._installed: list[int] = []
        self._tasks: set[asyncio.Task] = set()
        self._started = False

    @property
    def config(self) -> Config:
        return self.routing.config

    def reload_on(self, signum: int) -> None:
        """Reload the config source (``reload()``) when the process receives ``signum`` (e.g. SIGHUP). The
        handler is installed on the event loop when the gateway starts (in the main thread only), so the
        reload never runs inside a signal handler, where it could wait on a lock its own thread holds."""
        self._signals.add(signum)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            if not self._started:
                self._start()
            return await self.app(scope, receive, send)

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._start()
            elif message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        await self.app(scope, receive, lifespan_send)

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            try:
                loop.add_signal_handler(signum, self._spawn, self.reload)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no such signals
                self.logger.warning("reload_signal_not_installed", signal=signal.Signals(signum).name)
            else:
                self._installed.append(signum)
        if self.routing.shared:
            self._spawn(self._watch)

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> None:
        """Re-read the config source in a thread and serve it (in every process sharing the routing state);
        log ``config_reloaded`` with the route versions, or ``config_reload_failed`` (the old config keeps
        serving)."""
        try:
            versions = await asyncio.to_thread(self.routing.reload)
        except Exception as exc:  # a bad config file, or a state file that cannot be written
            self.logger.error("config_reload_failed", error=str(exc))
        else:
            self.logger.info("config_reloaded", routes=versions)

    async def _watch(self) -> None:
        """Every ``sync_interval_s``, serve what another process recorded in the shared routing state."""
        while True:
            await asyncio.sleep(self.sync_interval_s)
            try:
                changed = await asyncio.to_thread(self.routing.sync)
            except Exception as exc:
                self.logger.error("config_sync_failed", generation=self.routing.generation, error=str(exc))
            else:
                if changed:
                    self.logger.info("config_synced", generation=self.routing.generation,
                                     routes={name: r.version for name, r in self.routing.routes.items()})

    async def aclose(self) -> None:
        """Stop the signal handlers and the state checks; close the upstream transport."""
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()
        for task in list(self._tasks):
            task.cancel()
        await self.transport.aclose()


def _build(config: Config, fallback: ASGIApp | None, transport: Transport | None, logger: Any,
           layers: Callable[..., list[Layer]], prefixes: tuple[str, ...] | None, routing: LiveRouting | None,
           source: Callable[[], Config] | None) -> Gateway:
    transport = transport or AiohttpTransport()
    routing = routing or LiveRouting(config, versions=open_versions(config), source=source)
    chosen = layers(config, routing=routing, logger=logger, prefixes=prefixes)
    check_stack(chosen)
    dispatch = Dispatch(routing=routing, transport=transport, max_body_bytes=config.server.max_body_bytes)
    embeddings = Embeddings(routing=routing, transport=transport, max_body_bytes=config.server.max_body_bytes)
    endpoints = Endpoints(dispatch=dispatch, embeddings=embeddings, routing=routing, fallback=fallback,
                          admin_token=config.server.admin_token, logger=logger)
    return Gateway(compose(chosen, endpoints), routing=routing, transport=transport, logger=logger)


def open_versions(config: Config) -> Versions:
    """The route-version store the config names: a SQLite file, or this process's memory."""
    return SQLiteVersions(config.server.state_path) if config.server.state_path else MemoryVersions()


def build_app(config: Config, *, transport: Transport | None = None, logger: Any = None,
              layers: Callable[..., list[Layer]] = stack, routing: LiveRouting | None = None,
              source: Callable[[], Config] | None = None) -> Gateway:
    """Answer the standalone gateway app for ``config``; ``source`` re-reads the config on reload."""
    return _build(config, None, transport, logger, layers, None, routing, source)


def wrap(app: ASGIApp, config: Config, *, transport: Transport | None = None, logger: Any = None,
         layers: Callable[..., list[Layer]] = stack, routing: LiveRouting | None = None,
         source: Callable[[], Config] | None = None) -> Gateway:
    """Answer ``app`` with the mux stack around it: mux serves its API paths, ``app`` everything else
    (its lifespan included)."""
    return _build(config, app, transport, logger, layers, API_PREFIXES, routing, source)
