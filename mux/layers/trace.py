"""TraceLayer: the request id, the ``x-mux-*`` response headers, one log record per request, and one ledger row
per LLM request.

Writes ``ctx.request_id``. Reads ``ctx.outcome``, ``ctx.request``, ``ctx.mlx``, ``ctx.plan`` and
``ctx.trace`` (after the inner app ran, for the record; at ``http.response.start``, for the headers), and for
the ledger row ``ctx.key``, ``ctx.budget`` and ``ctx.ratelimit`` when a layer wrote them (they are optional, so
not declared in ``reads_after``).

Headers, added to every response it sees: ``x-mux-request-id``; and where known when the response starts
``x-mux-provider``, ``x-mux-model-used``, ``x-mux-cost-usd``, ``x-mux-latency-ms``, ``x-mux-config``,
``x-mux-config-version``, ``x-mux-ab-variant`` (a stream knows its provider and model when it starts; its
cost arrives in the final usage chunk). The record is one structured log event ``request`` with id, method,
path, status, model asked and used, provider, latency, time to first byte, tokens, cost, end user, tags,
session, error code and the decision trace; it is written even when an inner app raises.

With a ``ledger`` (``mux.ledger.LedgerWriter``), every request to an LLM front door (``mux.ingress``: answered,
refused, failed, cancelled) also leaves one ledger row (a ``LedgerRow``'s values, ``mux.ledger.row``), built
from the same facts as the log record and handed to ``ledger.submit`` (synchronous, never waits). Its
``status`` is the HTTP status sent (when nothing was sent, the outcome's: 499 for a client that went away),
except that a stream cut after its first byte records the in-band error's status (499 when the client went
away), and a request whose inner app raised records 500 (499 when it was cancelled).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

import msgspec

from mux.asgi import ASGIApp, Message, Receive, Scope, Send
from mux.context import Context, context_of, route_path, run_finishers
from mux.ingress import ingress_of
from mux.ledger.row import NO_TAGS, RowValues, json_text, nano_usd
from mux.logging import RecordLogger
from mux.routing.decision import decision_trace

if TYPE_CHECKING:
    from mux.ledger import LedgerWriter


class _ErrorPeek(msgspec.Struct):
    code: str | None = None
    type: str | None = None


class _ErrorBodyPeek(msgspec.Struct):
    error: _ErrorPeek | None = None


_error_peek = msgspec.json.Decoder(_ErrorBodyPeek)
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)


def _new_process() -> None:  # a forked child must not repeat its parent's ids
    global _PREFIX, _COUNTER
    _PREFIX, _COUNTER = os.urandom(4).hex(), itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process)


class RequestIds:
    """Request ids: a per-process random prefix and one counter shared by every instance in the process, so
    two apps in one process never hand out the same id; ordered within a process, cheap."""

    def __call__(self) -> str:
        return f"req_{_PREFIX}{next(_COUNTER):010x}"


class TraceLayer:
    reads: frozenset[str] = frozenset()
    reads_after: frozenset[str] = frozenset()
    uses = frozenset({"outcome", "request", "mlx", "plan", "trace"})  # read when present, after answering
    writes = frozenset({"request_id"})

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: Any = None,
        prefixes: tuple[str, ...] | None = None,
        ledger: LedgerWriter | None = None,
    ) -> None:
        """``prefixes`` limits the layer to paths starting with one of them (``None``: every HTTP request);
        ``ledger`` receives one row per LLM request (``None``: no ledger)."""
        self.app = app
        self.logger = logger or RecordLogger("mux.requests")
        self.prefixes = prefixes
        self.new_id = RequestIds()
        self.ledger = ledger
        self._keep_bodies = ledger is not None and ledger.store_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.prefixes is not None and not route_path(scope).startswith(self.prefixes)):
            return await self.app(scope, receive, send)
        ctx = context_of(scope)
        ctx.request_id = request_id = self.new_id()
        runs_finishers = ctx.finishers is None  # (a TraceLayer outside, if any, runs them)
        if runs_finishers:
            ctx.finishers = []  # inner layers' work for the request's end (``mux.context.at_end``)
        status = 0
        first_byte: float | None = None
        error_code: str | None = None
        sent: list[bytes] | None = [] if self._keep_bodies else None
        recorded = False

        def finish(failure: str | None) -> None:
            """Log the request's record and queue its ledger row, once: as its last byte goes out (so a client
            that asks for its record right after its answer finds it queued), or when the app ends without."""
            nonlocal recorded
            recorded = True
            fields = record(ctx, scope, status or ctx.outcome.status or 500, first_byte, error_code, failure)
            self.logger.info("request", **fields)
            if self.ledger is not None and ingress_of(scope) is not None:
                self.ledger.submit(ledger_row(ctx, fields, status, error_code, failure, sent))

        def traced_send(message: Message) -> Awaitable[None]:  # returns send's awaitable: no extra coroutine
            nonlocal status, first_byte, error_code
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-mux-request-id", request_id.encode()))
                headers.extend(response_headers(ctx, perf_counter()))
                message = {**message, "headers": headers}
            elif kind == "http.response.body":
                body = message.get("body", b"")
                if first_byte is None and body:
                    first_byte = perf_counter()
                    if status >= 400:
                        error_code = error_code_of(body)
                if sent is not None and body:
                    sent.append(body)
                if not message.get("more_body", False) and not recorded:
                    finish(None)
            return send(message)

        failure: str | None = None
        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            failure = type(exc).__name__
            raise
        finally:
            if runs_finishers:
                run_finishers(ctx)
            if not recorded:
                finish(failure)


def response_headers(ctx: Context, now: float) -> list[tuple[bytes, bytes]]:
    """Answer the ``x-mux-*`` headers known from the context at ``now``."""
    headers = [(b"x-mux-latency-ms", f"{(now - ctx.started) * 1000:.1f}".encode())]
    outcome = ctx.outcome
    if outcome.provider is not None:
        headers.append((b"x-mux-provider", outcome.provider.encode()))
    if outcome.model is not None:
        headers.append((b"x-mux-model-used", outcome.model.encode("utf-8", "replace")))
    if outcome.cost_usd is not None:
        headers.append((b"x-mux-cost-usd", _usd(outcome.cost_usd)))
    if outcome.cache is not None:
        headers.append((b"x-mux-cache", outcome.cache.encode()))
    plan = ctx.plan
    if plan is not None and plan.route:
        headers.append((b"x-mux-config", f"@{plan.route}".encode()))
        if plan.route_version is not None:
            headers.append((b"x-mux-config-version", str(plan.route_version).encode()))
        if plan.variant is not None:
            headers.append((b"x-mux-ab-variant", plan.variant.encode()))
    return headers


def _usd(cost: float) -> bytes:
    """A cost in plain decimal notation (never an exponent), to ten decimal places at most."""
    text = f"{cost:.10f}".rstrip("0").rstrip(".")
    return text.encode() if text else b"0"


def error_code_of(body: bytes) -> str | None:
    """Answer the ``error.code`` (else ``error.type``) of an OpenAI-shaped error body, if it is one."""
    try:
        error = _error_peek.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return (error.code or error.type) if error is not None else None


def record(
    ctx: Context, scope: Scope, status: int, first_byte: float | None, error_code: str | None, failure: str | None
) -> dict[str, Any]:
    """Answer the fields of the request's log record."""
    now = perf_counter()
    outcome = ctx.outcome
    fields: dict[str, Any] = {
        "request_id": ctx.request_id,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "latency_ms": round((now - ctx.started) * 1000, 3),
    }
    if first_byte is not None:
        fields["ttfb_ms"] = round((first_byte - ctx.started) * 1000, 3)
    request = ctx.request
    if request is not None:
        fields["model"] = request.model
        fields["stream"] = bool(getattr(request, "stream", False))
    if outcome.provider is not None:
        fields["provider"] = outcome.provider
        fields["model_used"] = outcome.model
    usage = outcome.usage
    if usage is not None:
        fields["prompt_tokens"] = usage.prompt_tokens
        fields["completion_tokens"] = usage.completion_tokens
        if usage.cached_tokens:
            fields["cached_tokens"] = usage.cached_tokens
        if usage.reasoning_tokens:
            fields["reasoning_tokens"] = usage.reasoning_tokens
    if outcome.cost_usd is not None:
        fields["cost_usd"] = outcome.cost_usd
    if outcome.cache is not None:
        fields["cache"] = outcome.cache
    mlx = ctx.mlx
    if mlx is not None:
        if mlx.end_user:
            fields["end_user"] = mlx.end_user
        if mlx.tags:
            fields["tags"] = mlx.tags
        if mlx.session_id:
            fields["session_id"] = mlx.session_id
    error = failure or outcome.error_type or error_code
    if error is not None:
        fields["error"] = error
    if outcome.attempts:
        fields["attempts"] = outcome.attempts
    if ctx.plan is not None or ctx.trace:
        fields["trace"] = decision_trace(ctx.plan, ctx.trace)
    return fields


def ledger_row(
    ctx: Context,
    fields: dict[str, Any],
    sent_status: int,
    error_code: str | None,
    failure: str | None,
    sent: list[bytes] | None = None,
) -> RowValues:
    """Answer the request's ledger row, as the values it is written as (``mux.ledger.row.RowValues``: the
    ``LedgerRow`` fields in order), from its context and its log record's ``fields`` (latency, first byte,
    stream flag, decision trace); ``sent_status`` is the status sent (0: none), ``error_code`` the one peeked
    from an error body, ``failure`` the name of the exception the inner app raised, ``sent`` the response body
    chunks when bodies are kept."""
    outcome, mlx, plan, key, request, usage = ctx.outcome, ctx.mlx, ctx.plan, ctx.key, ctx.request, ctx.outcome.usage
    status = sent_status or outcome.status or 500
    code = outcome.error_type or error_code
    if failure is not None:
        cancelled = failure == "CancelledError"
        status = 499 if cancelled else status if status >= 400 else 500
        code = "cancelled" if cancelled else code or "internal_error"
    elif outcome.status is not None and outcome.status >= 400 > status:  # a stream cut after its first byte
        status = outcome.status
    latency_ms = fields["latency_ms"]
    trace = fields.get("trace")
    return (
        ctx.request_id,  # request_id
        time() - latency_ms / 1000,  # created_at
        outcome.response_id,
        key.name if key is not None else None,  # key_name
        key.team if key is not None else None,  # team
        mlx.end_user if mlx is not None else None,
        json_text(mlx.tags) if mlx is not None and mlx.tags else NO_TAGS,  # tags
        mlx.session_id if mlx is not None else None,
        request.model if request is not None else plan.requested if plan is not None else None,  # model_requested
        outcome.model,  # model_used
        outcome.provider,
        plan.route if plan is not None else None,
        plan.route_version if plan is not None else None,
        plan.strategy if plan is not None else None,
        status,
        code if status >= 400 else None,  # error_code
        outcome.attempts,
        usage.prompt_tokens if usage is not None else 0,
        usage.completion_tokens if usage is not None else 0,
        usage.cached_tokens if usage is not None else 0,
        usage.cache_write_tokens if usage is not None else 0,
        usage.reasoning_tokens if usage is not None else 0,
        nano_usd(outcome.cost_usd),  # cost_nano
        latency_ms,
        fields.get("ttfb_ms"),
        1 if fields.get("stream") else 0,  # stream
        outcome.cache,  # cache_status
        ctx.budget,  # budget_outcome
        ctx.ratelimit,  # rate_limit_outcome
        outcome.finish_reason,
        None if trace is None else json_text(trace),
        ctx.body if sent is not None else None,  # request_body
        b"".join(sent) if sent else None,  # response_body
    )
