"""The composition root: the ordered layer stack, its field check, and the app around shared resources.

The order, outermost first, and why each pair is in its order:

- ErrorLayer before everything, so a bug in any layer still answers a 500 in the request's dialect.
- TraceLayer next, so every response (denials included) carries a request id and leaves a record (and, with a
  ledger, every LLM request one ledger row: it sees the status of refusals from every layer inside it).
- AuthLayer (present when keys can exist: keys configured or an admin token set) after TraceLayer, so a
  401/403 is logged with its request id, and before TagsLayer and everything else: an unauthenticated
  request gets no further than a 401 (its body is never read, no planning work is done), and the layers
  inside it (rate limits, budgets) can key on ``ctx.key``.
- TagsLayer before rate limits, budgets and cache, which key on the end user and tags it writes.
- (RateLimitLayer) after TagsLayer and (AuthLayer), whose end user, tags and key it counts by, and before
  RouterLayer: a request over its rate is refused before any planning work, and before its budget is touched.
- RouterLayer before (CacheLayer, BudgetLayer): the cache key needs the resolved target, and the budget
  reserves the worst case over the targets the plan may try (summed for a cascade), so both need the plan.
- (CacheLayer) before (BudgetLayer): a cache hit spends nothing, so it reserves nothing.
- (BudgetLayer) innermost, right around the terminal: it reserves only for requests that will reach a
  provider, settles after the terminal returned (after a stream's last byte), and a ``downgrade`` replaces the
  plan with nothing left between it and Dispatch to act on the old one.
- Dispatch, the terminal handler, executes the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mux import runtime
from mux.admin.keys import KeyAdmin
from mux.asgi import API_PREFIXES, ASGIApp, Message, Receive, Scope, Send
from mux.config import Config
from mux.endpoints import Endpoints
from mux.engine.dispatch import Dispatch
from mux.engine.transport import Transport
from mux.layers.auth import DEFAULT_PREFIXES, AuthLayer
from mux.layers.budget import BudgetLayer
from mux.layers.errors import ErrorLayer
from mux.layers.ratelimit import RateLimitLayer
from mux.layers.router import RouterLayer
from mux.layers.tags import TagsLayer
from mux.layers.trace import TraceLayer
from mux.resources import Resources, StartupError
from mux.routing.live import LiveRouting

Layer = tuple[type, dict[str, Any]]


class StackError(Exception):
    """The layer order leaves some layer reading a context field that nothing outside it writes."""


def stack(
    config: Config,
    resources: Resources | None = None,
    *,
    logger: Any = None,
    prefixes: tuple[str, ...] | None = None,
    routing: LiveRouting | None = None,
) -> list[Layer]:
    """Answer the default layers, outermost first, each as ``(LayerClass, options)``; shared resources come
    from ``resources`` (a fresh ``Resources(config)`` when none is given)."""
    if resources is None:
        resources = Resources(config, routing=routing)
    limit = config.server.max_body_bytes
    limits_on, budgets_on = counting(config)
    layers: list[Layer] = [
        (ErrorLayer, {"logger": logger}),
        (TraceLayer, {"logger": logger, "prefixes": prefixes, "ledger": resources.ledger}),
    ]
    if resources.keys is not None:
        layers.append(
            (
                AuthLayer,
                {
                    "cache": resources.keys.cache,
                    "prefixes": prefixes or DEFAULT_PREFIXES,
                    "resolve": _resolver(resources.routing),
                    "max_body_bytes": limit,
                    "admin_token": config.server.admin_token,
                    "logger": logger,
                },
            )
        )
    layers += [
        (TagsLayer, {"max_body_bytes": limit}),
    ]
    # ---- rate limits ----
    if limits_on:
        layers.append(
            (
                RateLimitLayer,
                {"store": resources.limits, "routing": resources.routing, "max_body_bytes": limit, "logger": logger},
            )
        )
    layers.append((RouterLayer, {"routing": resources.routing, "max_body_bytes": limit}))
    # ---- budgets ----
    if budgets_on:
        layers.append(
            (
                BudgetLayer,
                {"store": resources.spend, "routing": resources.routing, "max_body_bytes": limit, "logger": logger},
            )
        )
    return layers


def counting(config: Config) -> tuple[bool, bool]:
    """Answer whether the stack needs the RateLimitLayer and the BudgetLayer: when the config has rate limits
    (budgets), or when virtual keys may exist — in the config, or made through the admin API — since a key
    may carry its own ``rpm``/``tpm`` (``budget_usd``). A gateway started with neither needs a restart to
    get its first; after that, a reload applies edits to ``budgets:`` and ``rate_limits:``."""
    keys = bool(getattr(config, "keys", None)) or config.server.admin_token is not None
    return keys or bool(config.rate_limits), keys or bool(config.budgets)


def _resolver(routing: LiveRouting) -> Callable[[str], tuple[str, ...]]:
    """Answer the ``provider/model`` a bare model name resolves to under the config in force (for AuthLayer's
    model allow-lists)."""

    def resolve(name: str) -> tuple[str, ...]:
        return (routing.resolver.resolve(name).label,)

    return resolve


# Fields any layer or the terminal may produce on first use: by decoding the body (see mux.ingress.request_of),
# or by estimating its prompt (mux.money.estimate.prompt_estimate).
_DERIVED = frozenset({"ingress", "matched", "body", "request", "fields", "tokens", "trace"})


def check_stack(layers: list[Layer], terminal: Any = Dispatch) -> None:
    """Raise ``StackError`` if a layer (or the terminal) reads a context field that no layer outside it writes,
    or reads after the inner app answered (``reads_after``) a field that no layer of the stack writes.

    A layer declares what it needs: ``reads`` (before calling inward), ``reads_after`` (once the inner app
    answered) and ``writes``; what it only uses when present (``uses``) is documentation, never required, so
    every stack that works passes."""
    written = set(_DERIVED)
    for cls, _ in layers:
        missing = set(getattr(cls, "reads", ())) - written
        if missing:
            raise StackError(f"{cls.__name__} reads {sorted(missing)}, which no layer outside it writes")
        written |= set(getattr(cls, "writes", ()))
    name = getattr(terminal, "__name__", type(terminal).__name__)
    missing = set(getattr(terminal, "reads", ())) - written
    if missing:
        raise StackError(f"{name} reads {sorted(missing)}, which no layer writes")
    everything = written | set(getattr(terminal, "writes", ()))
    for cls, _ in [*layers, (terminal, {})]:
        missing = set(getattr(cls, "reads_after", ())) - everything
        if missing:
            raise StackError(
                f"{getattr(cls, '__name__', cls)} reads {sorted(missing)} after answering, which no "
                "layer of the stack writes"
            )


def compose(layers: list[Layer], inner: ASGIApp) -> ASGIApp:
    """Wrap ``inner`` in ``layers`` (outermost first)."""
    app = inner
    for cls, options in reversed(layers):
        app = cls(app, **{k: v for k, v in options.items() if v is not None})
    return app


class Gateway:
    """The composed app and the resources it owns: they are opened at lifespan startup (or by the first
    request, where a server runs no lifespan) and closed at shutdown. ``routing`` is the live routing state
    (``routing.reload()``, ``routing.rollback()``)."""

    def __init__(self, app: ASGIApp, resources: Resources, *, tune_gc: bool = False) -> None:
        """``tune_gc``: once started, tune the process's garbage collector (``mux.runtime``); the standalone
        gateway does, an app wrapped by ``wrap`` keeps its own settings."""
        self.app = app
        self.resources = resources
        self.tune_gc = tune_gc

    @property
    def routing(self) -> LiveRouting:
        return self.resources.routing

    @property
    def transport(self) -> Transport:
        return self.resources.transport

    @property
    def config(self) -> Config:
        return self.resources.routing.config

    def reload_on(self, signum: int) -> None:
        """Reload the config source when the process receives ``signum`` (e.g. SIGHUP); the handler is
        installed on the event loop when the gateway starts (``mux.routing.sync``)."""
        self.resources.sync.reload_on(signum)

    async def reload(self) -> None:
        """Re-read the config source (off the event loop) and serve it, logging the outcome."""
        await self.resources.sync.reload()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # a coroutine function, so that servers recognise an ASGI 3 app
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        if not self.resources.opened:
            await self.resources.open()
        return await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Open the resources before the inner app's startup; close them after its shutdown. A resource that
        fails to open turns startup into ``lifespan.startup.failed`` with the reason."""
        failure: str | None = None

        async def opening_receive() -> Message:
            nonlocal failure
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.resources.open()
                except StartupError as exc:
                    failure = str(exc)
                    self.resources.logger.error("startup_failed", error=failure)
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                if failure is not None:
                    message = {"type": "lifespan.startup.failed", "message": failure}
                elif self.tune_gc:
                    runtime.tune_gc()
            elif message["type"] == "lifespan.shutdown.complete":
                await self.resources.aclose()
            await send(message)

        await self.app(scope, opening_receive, closing_send)

    async def aclose(self) -> None:
        await self.resources.aclose()


def _build(
    config: Config,
    fallback: ASGIApp | None,
    transport: Transport | None,
    logger: Any,
    layers: Callable[..., list[Layer]],
    prefixes: tuple[str, ...] | None,
    routing: LiveRouting | None,
    source: Callable[[], Config] | None,
    resources: Resources | None,
) -> Gateway:
    resources = resources or Resources(config, transport=transport, routing=routing, source=source, logger=logger)
    chosen = layers(config, resources, logger=logger, prefixes=prefixes)
    check_stack(chosen)
    dispatch = Dispatch(
        routing=resources.routing, transport=resources.transport, max_body_bytes=config.server.max_body_bytes
    )
    keys = None
    if resources.keys is not None:
        keys = KeyAdmin(
            store=resources.keys.store, cache=resources.keys.cache, secret=resources.keys.secret, logger=logger
        )
    endpoints = Endpoints(
        dispatch=dispatch,
        routing=resources.routing,
        fallback=fallback,
        admin_token=config.server.admin_token,
        ledger=resources.ledger,
        logger=logger,
        keys=keys,
        ready=lambda: resources.opened,
    )
    return Gateway(compose(chosen, endpoints), resources, tune_gc=fallback is None and config.server.gc_tune)


def build_app(
    config: Config,
    *,
    transport: Transport | None = None,
    logger: Any = None,
    layers: Callable[..., list[Layer]] = stack,
    routing: LiveRouting | None = None,
    source: Callable[[], Config] | None = None,
    resources: Resources | None = None,
) -> Gateway:
    """Answer the standalone gateway app for ``config``; ``source`` re-reads the config on reload."""
    return _build(config, None, transport, logger, layers, None, routing, source, resources)


def wrap(
    app: ASGIApp,
    config: Config,
    *,
    transport: Transport | None = None,
    logger: Any = None,
    layers: Callable[..., list[Layer]] = stack,
    routing: LiveRouting | None = None,
    source: Callable[[], Config] | None = None,
    resources: Resources | None = None,
) -> Gateway:
    """Answer ``app`` with the mux stack around it: mux serves its API paths, ``app`` everything else
    (its lifespan included)."""
    return _build(config, app, transport, logger, layers, API_PREFIXES, routing, source, resources)
