"""Front doors: which path carries which LLM call, and the dialect each speaks.

An ``Ingress`` decodes the client's body into the internal request (the OpenAI chat or embeddings view) and
encodes answers, stream chunks and errors back in the client's dialect. Layers ask ``ingress_of(scope)``
whether a request carries an LLM call instead of matching paths, and answer their denials with ``deny``, in
the dialect of the request. ``ROUTES`` maps paths (relative to the mount point) to the module holding each
front door, imported on first use, so a layer that only reads headers never imports a dialect.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import msgspec

from mux.asgi import Receive, Scope, Send, send_error
from mux.context import Context, context_of, route_path
from mux.errors import MuxError

# Path (relative to root_path) -> "module:attribute" of the ingress serving it.
ROUTES: dict[str, str] = {
    "/v1/chat/completions": "mux.ingress.chat:CHAT",
    "/api/v1/chat/completions": "mux.ingress.chat:CHAT",
    "/v1/embeddings": "mux.ingress.embeddings:EMBEDDINGS",
    "/api/v1/embeddings": "mux.ingress.embeddings:EMBEDDINGS",
}


class StreamEncoder(Protocol):
    """One streamed answer in the client's dialect: internal chunk payloads (OpenAI chunk JSON) in, bytes out."""

    headers: list[tuple[bytes, bytes]]

    def chunks(self, payloads: list[bytes]) -> bytes: ...

    def end(self) -> bytes:
        """The bytes that end a stream that completed."""

    def fail(self, error: MuxError) -> bytes:
        """The bytes that end a stream cut by ``error``: never a clean end."""


class Ingress(Protocol):
    """A front door: one dialect of request, answer, stream and error."""

    name: str
    operation: Literal["chat", "embeddings"]

    def decode(self, body: bytes) -> tuple[Any, dict[str, msgspec.Raw]]:
        """Answer the validated internal request view and the body's raw top-level fields; raises
        ``InvalidRequest`` naming the parameter."""

    def render_error(self, error: MuxError) -> bytes: ...

    def answer(self, body: bytes, replace: dict[str, Any]) -> bytes:
        """Answer the client's body for an internal answer ``body`` with top-level fields replaced or added
        (``usage`` with its cost, ``mlx:trace``)."""

    def stream(self) -> StreamEncoder: ...


_loaded: dict[str, Ingress] = {}


def ingress_for(path: str) -> Ingress | None:
    """Answer the front door serving ``path`` (relative to the mount point), importing it on first use."""
    where = ROUTES.get(path)
    if where is None:
        return None
    ingress = _loaded.get(where)
    if ingress is None:
        module, _, name = where.partition(":")
        ingress = _loaded[where] = getattr(importlib.import_module(module), name)
    return ingress


def ingress_of(scope: Scope) -> Ingress | None:
    """Answer the front door of an HTTP request, or ``None`` when it carries no LLM call (another path, or a
    method other than POST). Looked up once per request; the answer is kept in the context."""
    ctx = scope.get("mux") or context_of(scope)
    if not ctx.matched:
        ctx.matched = True
        if scope["type"] == "http" and scope["method"] == "POST":
            ctx.ingress = ingress_for(route_path(scope))
    return ctx.ingress


def deny(scope: Scope, send: Send, error: MuxError) -> Awaitable[None]:
    """Answer ``error`` in the dialect of the request's front door (OpenAI's shape when it has none)."""
    ctx: Context | None = scope.get("mux")
    ingress = ctx.ingress if ctx is not None else None
    body = ingress.render_error(error) if ingress is not None else None
    return send_error(send, error, body=body)


async def request_of(scope: Scope, receive: Receive, limit: int) -> tuple[Any, Receive]:
    """Answer the validated request view of an LLM request, decoding the body on first use; raises
    ``InvalidRequest``. The request must have a front door (``ingress_of``)."""
    from mux.context import body_of

    ctx = context_of(scope)
    if ctx.request is None:
        ingress = ingress_of(scope)
        if ingress is None:
            raise LookupError("request_of needs a request to an LLM front door")
        body, receive = await body_of(scope, receive, limit)
        ctx.request, ctx.fields = ingress.decode(body)
    return ctx.request, receive


Then = Callable[[Context, Any, Scope, Receive, Send], Awaitable[None]]


def with_request(scope: Scope, receive: Receive, send: Send, limit: int, then: Then) -> Awaitable[None]:
    """Answer the awaitable of ``then(ctx, request, scope, receive, send)`` with the validated request.

    When a layer outside already decoded the request, ``then`` is called at once and its awaitable returned:
    the caller adds no coroutine frame to the request (a resumed coroutine pays for every frame of its await
    chain, so frames that only pass a request inward are worth avoiding). Otherwise the body is read and
    decoded first; a bad body is answered with its 400 in the request's dialect (a client gone before its body
    was complete, with nothing), and the error is written to ``ctx.outcome``."""
    ctx = context_of(scope)
    if ctx.request is not None:
        return then(ctx, ctx.request, scope, receive, send)
    return _decoded_then(ctx, scope, receive, send, limit, then)


async def _decoded_then(ctx: Context, scope: Scope, receive: Receive, send: Send, limit: int, then: Then) -> None:
    try:
        request, receive = await request_of(scope, receive, limit)
    except MuxError as error:
        ctx.outcome.status, ctx.outcome.error_type = error.status, error.code
        return await deny(scope, send, error)
    await then(ctx, request, scope, receive, send)
