"""The per-request context at ``scope["mux"]`` and the one place the request body is read.

Each field has one owning layer that writes it; the others only read it:

=============  ==============  ====================================================================
field          written by      holds
=============  ==============  ====================================================================
request_id     TraceLayer      the id in ``x-mux-request-id`` and every log line
body           first reader    the raw body, read once (``body_of``), replayed to inner apps
request        first decoder   the validated ``ChatRequest`` view (``request_of``)
fields         first decoder   the body's top-level fields as raw JSON, for forwarding
key            AuthLayer       the virtual key that authenticated the request
mlx            TagsLayer       tags, end user, cache controls, trace flag, session id
plan           RouterLayer     the ordered targets to attempt
outcome        Dispatch        provider, model used, usage, cost, status, attempts (the first decoder
                               writes status and error of a body it refuses)
trace          anyone          decision-trace events, in order: attempts, and notes with a ``type``
=============  ==============  ====================================================================
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Awaitable, Callable

import msgspec
from msgspec import Struct

from .asgi import Receive, Scope, Send, read_body, replaying, send_error
from .errors import MuxError
from .wire import CacheControl, ChatRequest, Usage, decode_request


class Mlx(Struct, gc=False):
    """The gateway's request annotations (``mlx:*`` fields and their headers)."""

    tags: dict[str, str] = {}
    end_user: str | None = None
    cache: CacheControl | None = None
    trace: bool = False
    session_id: str | None = None


class Outcome(Struct, gc=False):
    """What happened upstream, as Dispatch (or a cache) settled it."""

    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    status: int | None = None
    error_type: str | None = None
    streamed: bool = False
    stream_id: str | None = None  # the id of the stream's chunks, for the chunks mux adds at its end
    attempts: int = 0
    cache: str | None = None  # "hit" | "miss" | "skip"


class Context(Struct, gc=False):  # gc=False here and above: no context is part of a reference cycle
    started: float
    request_id: str = ""
    body: bytes | None = None
    request: ChatRequest | None = None
    fields: dict[str, msgspec.Raw] | None = None
    key: Any = None
    mlx: Mlx | None = None
    plan: Any = None
    outcome: Outcome = msgspec.field(default_factory=Outcome)
    trace: list[dict[str, Any]] = []


def context_of(scope: Scope) -> Context:
    """Answer the request's context, creating it if no layer has yet."""
    ctx = scope.get("mux")
    if ctx is None:
        ctx = scope["mux"] = Context(started=perf_counter())
    return ctx


async def body_of(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """Answer the request body (read at most once, refusing more than ``limit`` bytes) and a ``receive``
    that replays it to inner apps."""
    ctx = context_of(scope)
    if ctx.body is None:
        ctx.body = await read_body(scope, receive, limit)
        receive = replaying(ctx.body, receive)
    return ctx.body, receive


Then = Callable[[Context, ChatRequest, Scope, Receive, Send], Awaitable[None]]


def with_request(scope: Scope, receive: Receive, send: Send, limit: int, then: Then) -> Awaitable[None]:
    """Answer the awaitable of ``then(ctx, request, scope, receive, send)`` with the validated request.

    When a layer outside already decoded the request, ``then`` is called at once and its awaitable returned:
    the caller adds no coroutine frame to the request (a resumed coroutine pays for every frame of its await
    chain, so frames that only pass a request inward are worth avoiding). Otherwise the body is read and
    decoded first; a bad body is answered with its 400 (a client gone before its body was complete, with
    nothing), and the error is written to ``ctx.outcome``."""
    ctx = context_of(scope)
    if ctx.request is not None:
        return then(ctx, ctx.request, scope, receive, send)
    return _decoded_then(ctx, scope, receive, send, limit, then)


async def _decoded_then(ctx: Context, scope: Scope, receive: Receive, send: Send, limit: int, then: Then) -> None:
    try:
        request, receive = await request_of(scope, receive, limit)
    except MuxError as error:
        ctx.outcome.status, ctx.outcome.error_type = error.status, error.code
        return await send_error(send, error)
    await then(ctx, request, scope, receive, send)


async def request_of(scope: Scope, receive: Receive, limit: int) -> tuple[ChatRequest, Receive]:
    """Answer the validated chat request view, decoding the body on first use; raises ``InvalidRequest``."""
    ctx = context_of(scope)
    if ctx.request is None:
        body, receive = await body_of(scope, receive, limit)
        ctx.request, ctx.fields = decode_request(body)
    return ctx.request, receive
