"""The per-request context at ``scope["mux"]``, its typed accessor, and the one place the body is read.

Each field has one owning layer that writes it; the others only read it:

=============  ==============  ====================================================================
field          written by      holds
=============  ==============  ====================================================================
request_id     TraceLayer      the id in ``x-mux-request-id`` and every log line
ingress        first matcher   the front door of the request (``mux.ingress``), or ``None`` when the
                               request carries no LLM call (any other path or method)
body           first reader    the raw body, read once (``body_of``), replayed to inner apps
request        first decoder   the validated request view the ingress decoded (chat or embeddings)
fields         first decoder   the body's top-level fields as raw JSON, for forwarding
tokens         first to count  the prompt's token estimate (``mux.money.estimate.prompt_estimate``), made
                               once for the rate limits and the budgets
key            AuthLayer       the virtual key (``KeyRecord``) that authenticated the request
mlx            TagsLayer       tags, end user, cache controls, trace flag, session id
plan           RouterLayer     the ordered targets to attempt (``mux.routing.plan.Plan``); a budget's
                               ``downgrade`` action replaces it (BudgetLayer) with its route's plan
ratelimit      RateLimitLayer  the rate-limit outcome: ``ok``, ``limited`` (429) or ``fail_open``
budget         BudgetLayer     the budget outcome: ``ok``, ``warn``, ``downgrade``, ``blocked`` (402),
                               ``unavailable`` (503) or ``fail_open``
outcome        Dispatch        provider, model used, usage, per-attempt and total cost, status, response id (the
                               first decoder writes the status and error of a body it refuses)
trace          anyone          decision-trace events, in order: ``Attempt`` and ``Note`` Structs
finishers      TraceLayer      while it serves the request: the work inner layers left for its end
                               (``at_end``), run once by ``run_finishers``; ``None`` otherwise
=============  ==============  ====================================================================

**Finishers.** A layer that has work to do once the inner app is done (a budget's settle, a rate limit's
token correction) would otherwise await the inner app in a coroutine of its own, which then sits in the
request's await chain and is resumed at each of its waits. When a layer outside runs finishers (TraceLayer
does), such a layer hands its work over (``at_end``) and returns the inner app's awaitable directly; used
alone, it keeps its own ``try``/``finally``.

This module is the kernel: it imports nothing of mux above ``asgi`` and ``errors``; the types of fields
owned by higher packages are named for type checkers only.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import Struct

from mux.asgi import Receive, Scope, read_body, replaying

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from mux.ingress import Ingress
    from mux.keys.model import KeyRecord
    from mux.routing.plan import Plan
    from mux.wire.openai import CacheControl, Usage


class Mlx(Struct, gc=False):
    """The gateway's request annotations (``mlx:*`` fields and their headers)."""

    tags: dict[str, str] = {}
    end_user: str | None = None
    cache: CacheControl | None = None
    trace: bool = False
    session_id: str | None = None


class Attempt(Struct, gc=False, omit_defaults=True):
    """One attempt at a target, as the decision trace reports it (``status``: ok, error, partial, escalated,
    skipped)."""

    target: str
    status: str
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    retry: int = 0
    error: str | None = None
    http_status: int | None = None
    reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None


class Note(Struct, gc=False, omit_defaults=True):
    """A decision worth a line in the trace that is not an attempt: ``type`` is ``translation`` (with the
    target and its ``notes``) or ``policy`` (with a ``note``)."""

    type: str
    target: str | None = None
    notes: list[str] | None = None
    note: str | None = None


TraceEvent = Attempt | Note


class Spend(Struct, gc=False):
    """What one attempt cost: its usage and price (``None`` when unknown)."""

    target: str
    usage: Usage | None
    cost_usd: float | None


class Outcome(Struct, gc=False):
    """What happened upstream, as Dispatch (or a cache) settled it.

    ``usage`` is the answering attempt's; ``cost_usd`` is the request's total over every attempt that
    reported usage (``spent`` keeps each one); ``None`` while no attempt's price is known."""

    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    spent: list[Spend] = []
    status: int | None = None
    error_type: str | None = None
    streamed: bool = False
    stream_id: str | None = None  # the id of the stream's chunks, for the chunks mux adds at its end
    attempts: int = 0
    cache: str | None = None  # "hit" | "miss" | "skip"
    response_id: str | None = None  # the answer's ``id`` (chatcmpl-…), as the client saw it
    finish_reason: str | None = None  # the answer's (first choice's) finish_reason


class Context(Struct, gc=False):  # gc=False here and above: no context is part of a reference cycle
    started: float
    request_id: str = ""
    ingress: Ingress | None = None
    matched: bool = False  # whether ``ingress`` was looked up (it may be None after that)
    body: bytes | None = None
    request: Any = None  # the ingress's validated view: ChatRequest or EmbeddingsRequest
    fields: dict[str, msgspec.Raw] | None = None
    tokens: int | None = None  # the prompt's token estimate, once made (mux.money.estimate.prompt_estimate)
    key: KeyRecord | None = None  # the authenticating virtual key (AuthLayer); None while no key exists
    mlx: Mlx | None = None
    plan: Plan | None = None
    ratelimit: str | None = None  # RateLimitLayer's outcome (None: no limit applied)
    budget: str | None = None  # BudgetLayer's outcome (None: no budget applied)
    outcome: Outcome = msgspec.field(default_factory=Outcome)
    trace: list[TraceEvent] = []
    # the work left for the request's end, while a layer outside runs it (TraceLayer); a finisher usually refers
    # to the context, so ``run_finishers`` drops the list (the context is not tracked by the collector)
    finishers: list[Callable[[], None]] | None = None


def context_of(scope: Scope) -> Context:
    """Answer the request's context, creating it if no layer has yet."""
    ctx = scope.get("mux")
    if ctx is None:
        ctx = scope["mux"] = Context(started=perf_counter())
    return ctx


def context_of_request(request: HTTPConnection) -> Context:
    """Answer the context of a Starlette/FastAPI ``Request`` (or WebSocket), for endpoints behind mux layers."""
    return context_of(request.scope)


def at_end(ctx: Context, finisher: Callable[[], None]) -> bool:
    """Have ``finisher`` run once the request's inner app is done, whatever ends it, by the layer outside that
    runs finishers; answer False when none does (the caller then runs it itself). A finisher must not raise."""
    finishers = ctx.finishers
    if finishers is None:
        return False
    finishers.append(finisher)
    return True


def run_finishers(ctx: Context) -> None:
    """Run the finishers left for the request's end, the last one left first (as nested ``finally`` blocks
    would), and stop taking more."""
    finishers, ctx.finishers = ctx.finishers, None
    if finishers:
        for finisher in reversed(finishers):
            finisher()


def route_path(scope: Scope) -> str:
    """Answer the request path relative to the app's mount point (``root_path``), as routes are matched."""
    path: str = scope["path"]
    root = scope.get("root_path")
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


async def body_of(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """Answer the request body (read at most once, refusing more than ``limit`` bytes) and a ``receive``
    that replays it to inner apps."""
    ctx = context_of(scope)
    if ctx.body is None:
        ctx.body = await read_body(scope, receive, limit)
        receive = replaying(ctx.body, receive)
    return ctx.body, receive
