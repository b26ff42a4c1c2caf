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

from typing import Any, Callable

from mux.asgi import API_PREFIXES, ASGIApp, Receive, Scope, Send
from mux.config import Config
from mux.engine.dispatch import Dispatch
from mux.engine.embeddings import Embeddings
from mux.endpoints import Endpoints
from mux.layers import ErrorLayer, RouterLayer, TagsLayer, TraceLayer
from mux.routing.live import LiveRouting
from mux.engine.transport import AiohttpTransport, Transport
from mux.routing.versions import MemoryVersions, SQLiteVersions, Versions

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
    """The composed app plus the resources it owns; closes the upstream transport at lifespan shutdown.
    ``routing`` is the live routing state (``routing.reload()``, ``routing.rollback()``)."""

    def __init__(self, app: ASGIApp, *, routing: LiveRouting, transport: Transport) -> None:
        self.app = app
        self.routing = routing
        self.transport = transport

    @property
    def config(self) -> Config:
        return self.routing.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def closing_send(message: dict) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.transport.aclose()
            await send(message)

        await self.app(scope, receive, closing_send)

    async def aclose(self) -> None:
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
    return Gateway(compose(chosen, endpoints), routing=routing, transport=transport)


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
