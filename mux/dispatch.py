"""Dispatch: the terminal handler of ``POST /v1/chat/completions``. It executes the plan's attempts.

Reads ``ctx.request``/``ctx.fields`` (decoding the body itself if no layer did), ``ctx.plan`` (planning itself
if no RouterLayer ran) and ``ctx.mlx``; writes ``ctx.outcome`` and appends one trace event per attempt.
Transport, timeouts, retries, backoff and failover live here once; provider knowledge stays in adapters.

The attempt policy: targets in plan order, each tried ``1 + retries`` times; a failure is retried or failed
over only if its class is in the plan's ``retry_on`` (an upstream status, ``5xx``, ``timeout``, ``connect``)
— other 4xx never are; each retry needs a token from the shared retry budget; a retry at the same provider
waits a full-jitter exponential backoff (at least its ``Retry-After``), never past the plan's total time.
A target whose breaker is open (or whose half-open probe is in flight) is skipped while another target is
left; the last one is tried anyway (health never refuses). A target whose adapter refuses the request (a
parameter it cannot honour) is skipped, and the next one tried. Each attempt's end is recorded in the
shared health by its verdict (``mux.health.verdict``).

Streams: nothing is sent until an attempt yields its first chunk, so an attempt that fails before that
(error status, connect error, first-byte timeout, empty or malformed first event) falls over unseen. After
the first byte a failure is one in-band error event and the stream ends without ``[DONE]``.

A client that disconnects, streamed or not, cancels the upstream request and frees its connection; nothing
more is sent and ``ctx.outcome`` says 499 ``client_disconnected``.
"""

from __future__ import annotations

import asyncio
import random
from functools import partial
from time import perf_counter, time
from typing import Any, Awaitable, Callable, Mapping

import msgspec

from .asgi import ClientWatch, Receive, Scope, Send, send_error, send_json
from .catalog import Catalog
from .config import CascadeConfig, ProviderConfig, load_validator
from .context import Context, Outcome, with_request
from .deadline import Deadline
from .decision import decision_trace
from .errors import (ClientDisconnected, MuxError, NoRouteAvailable, UpstreamError, UpstreamTimeout, render_error,
                     retry_after_s)
from .live import LiveRouting
from .pricing import cost_of
from .providers import ADAPTERS, Adapter, Call, Completion, UpstreamRequest
from .routing import Plan, Target
from .sse import DONE, SSEParser, frame
from .transport import Transport
from .wire import ChatRequest, JsonObjectFormat, JsonSchemaFormat, Usage, trace_chunk, usage_chunk, with_fields

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

_GONE = ClientDisconnected("The client went away before its answer was complete.")

Once = Callable[[Context, Target, Call, UpstreamRequest, float], Awaitable[Any]]


class StreamEnd(msgspec.Struct):
    """How a streamed attempt that reached the client ended: its last payloads, or the error that cut it."""

    payloads: list[bytes]
    error: MuxError | None = None
    ttfb_ms: float | None = None


class Dispatch:
    """Execute the plan for a chat completion and answer it, streamed or not."""

    reads: frozenset[str] = frozenset()  # plan and mlx are used when present, not required
    reads_after: frozenset[str] = frozenset()
    writes = frozenset({"outcome"})

    def __init__(self, *, routing: LiveRouting, transport: Transport, adapters: dict[str, Adapter] = ADAPTERS,
                 max_body_bytes: int = 10 * 1024 * 1024, rng: random.Random | None = None) -> None:
        self.routing = routing
        self.transport = transport
        self.adapters = adapters
        self.max_body_bytes = max_body_bytes
        self.rng = rng or random.Random()
        self._validators: dict[str, Callable[..., bool]] = {}

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return with_request(scope, receive, send, self.max_body_bytes, self._dispatch)

    def _dispatch(self, ctx: Context, request: ChatRequest, scope: Scope, receive: Receive,
                  send: Send) -> Awaitable[None]:
        plan = ctx.plan
        if plan is None:
            mlx = ctx.mlx
            try:
                plan = ctx.plan = self.routing.router.plan(
                    request, end_user=mlx.end_user if mlx else None, session=mlx.session_id if mlx else None)
            except MuxError as error:
                _failed(ctx.outcome, error)
                return send_error(send, error)
        if request.stream:
            return self._stream(ctx, request, plan, receive, send)
        return self._complete(ctx, request, plan, receive, send)

    # --- the attempt policy ----------------------------------------------------------------------------

    async def _attempts(self, ctx: Context, request: ChatRequest, plan: Plan, once: Once) -> tuple[Target, Any]:
        """Run ``once`` over the plan's targets under the retry policy; answer the first success.

        A target whose breaker is open (or whose half-open probe is in flight) is skipped while another target
        is left after it; the last is always tried. A target whose adapter refuses the request is skipped.
        Every attempt's end is recorded in the shared health (a probe's too, whatever ends it). Raises the last
        upstream ``MuxError`` when no attempt succeeds, else the last refusal."""
        loop = asyncio.get_running_loop()
        health = self.routing.health
        deadline = loop.time() + plan.total_timeout_s if plan.total_timeout_s else None
        health.budget.deposit()
        error: MuxError | None = None
        refused: MuxError | None = None
        last = len(plan.targets) - 1
        failed_provider: str | None = None
        failures = 0
        escalated: tuple[Target, Any] | None = None
        for index, target in enumerate(plan.targets):
            for repeat in range(target.retries + 1):
                if error is not None:
                    stop = None
                    if not retryable(error, plan.retry_on):
                        stop = ""
                    elif not health.budget.withdraw():
                        stop = "retry budget exhausted: no further attempt"
                    delay = 0.0
                    if stop is None and target.provider.name == failed_provider:
                        delay = health.backoff_s(failures, self.rng, retry_after_s(error))
                    if stop is None and deadline is not None and loop.time() + delay >= deadline:
                        stop = "the route's total time is spent: no further attempt"
                    if stop is not None:
                        if stop:
                            _note(ctx, stop)
                        if escalated is not None:  # a cheaper answer that failed its check beats no answer
                            return escalated
                        raise error
                    if delay:
                        await asyncio.sleep(delay)
                label = target.label
                if not health.closed(label):
                    blocked = health.blocked(label)
                    if blocked is not None:
                        if index < last:  # skip it: another target is left
                            _event(ctx, target, "skipped", reason=blocked)
                            break
                        if label != plan.panic:  # the plan kept it; it was blocked since: it is sent anyway
                            _note(ctx, f"{label}: {blocked}, and no other target is left: sending to it anyway")
                call = self._call(ctx, request, target)
                try:
                    upstream = self._build(ctx, target, call)
                except MuxError as exc:  # the adapter refuses this request: the next target may serve it
                    _event(ctx, target, "skipped", error=exc, reason=exc.message)
                    refused = exc
                    break
                timeout = target.timeout_s or target.provider.timeout_s
                if deadline is not None:
                    timeout = min(timeout, deadline - loop.time())
                ctx.outcome.attempts += 1
                probe = health.admit(label)  # from here on, every way out records or releases it
                started = perf_counter()
                try:
                    result = await once(ctx, target, call, upstream, timeout)
                except MuxError as exc:
                    health.failed(label, exc, probe=probe)
                    _event(ctx, target, "error", started, error=exc, retry=repeat)
                    error, failed_provider, failures = exc, target.provider.name, failures + 1
                    continue
                except BaseException:  # cancelled (the client went away, a deadline) or a bug: no verdict
                    health.release(label, probe)
                    raise
                latency_ms = (perf_counter() - started) * 1000
                if isinstance(result, StreamEnd) and result.error is not None:
                    health.failed(label, result.error, probe=probe)
                    _event(ctx, target, "partial", started, error=result.error, retry=repeat,
                           ttfb_ms=result.ttfb_ms, usage=ctx.outcome.usage, cost=ctx.outcome.cost_usd)
                    return target, result
                health.record(label, True, latency_ms, probe=probe)
                reason = None
                if plan.cascade is not None and isinstance(result, Completion) and index < last:
                    reason = self._cascade_failure(plan.cascade, request, result)
                _event(ctx, target, "escalated" if reason else "ok", started, retry=repeat, reason=reason,
                       ttfb_ms=getattr(result, "ttfb_ms", None), usage=ctx.outcome.usage, cost=ctx.outcome.cost_usd)
                if reason is None:
                    return target, result
                escalated, error = (target, result), None
                break
        if escalated is not None:  # every cheaper answer failed its check and nothing better came: keep it
            return escalated
        raise error or refused or NoRouteAvailable("No target of the plan was attempted.")

    def _cascade_failure(self, cascade: CascadeConfig, request: ChatRequest, completion: Completion) -> str | None:
        """Answer why a cheaper target's answer should be escalated, or ``None`` if it passes every check."""
        try:
            answer = msgspec.json.decode(completion.body)
            choice = answer["choices"][0]
            message = choice.get("message") or {}
        except (msgspec.DecodeError, KeyError, IndexError, TypeError):
            return "error"
        checks = cascade.checks
        if "refusal" in checks and (message.get("refusal") or choice.get("finish_reason") == "content_filter"):
            return "refusal"
        if "length" in checks and choice.get("finish_reason") == "length":
            return "length"
        wants_json = isinstance(request.response_format, (JsonObjectFormat, JsonSchemaFormat))
        if "invalid_json" in checks and wants_json and not message.get("tool_calls"):
            try:
                msgspec.json.decode((message.get("content") or "").encode())
            except msgspec.DecodeError:
                return "invalid_json"
        if cascade.validator:
            if not self._validator(cascade.validator)(request, answer):
                return "validator"
        return None

    def _validator(self, path: str) -> Callable[..., bool]:
        validator = self._validators.get(path)
        if validator is None:
            validator = self._validators[path] = load_validator(path)
        return validator

    # --- non-streaming ---------------------------------------------------------------------------------

    async def _complete(self, ctx: Context, request: ChatRequest, plan: Plan, receive: Receive, send: Send) -> None:
        """Answer the plan's completion; a client that goes away cancels the upstream request."""
        outcome = ctx.outcome
        with ClientWatch(receive):  # a ``with`` block, not a coroutine: no frame added to the request
            try:
                target, completion = await self._attempts(ctx, request, plan, self._complete_once)
            except MuxError as error:
                _failed(outcome, error)
                return await send_error(send, error)
            outcome.status = 200
            replace: dict[str, Any] = {}
            if outcome.cost_usd is not None and completion.usage is not None:
                replace["usage"] = completion.usage
            if ctx.mlx is not None and ctx.mlx.trace:
                replace["mlx:trace"] = decision_trace(plan, ctx.trace)
            body = with_fields(completion.body, replace) if replace else completion.body
            return await send_json(send, 200, body)
        _failed(outcome, _GONE)  # reached only when the watch absorbed the client's going away

    async def _complete_once(self, ctx: Context, target: Target, call: Call, upstream: UpstreamRequest,
                             timeout_s: float) -> Completion:
        provider = target.provider
        adapter = self.adapters[provider.type]
        status, headers, body = await exchange(self.transport, upstream, provider, timeout_s)
        if status >= 400:
            raise adapter.parse_error(provider, status, body, headers)
        completion = adapter.parse_response(provider, call, body)
        self._settle(ctx.outcome, target, completion.model, completion.usage)
        return completion

    # --- streaming -------------------------------------------------------------------------------------

    async def _stream(self, ctx: Context, request: ChatRequest, plan: Plan, receive: Receive, send: Send) -> None:
        """Stream the plan's answer; a client that goes away cancels the upstream request."""
        ctx.outcome.streamed = True
        with ClientWatch(receive):
            return await self._stream_attempts(ctx, request, plan, send)
        _failed(ctx.outcome, _GONE)  # reached only when the watch absorbed the client's going away

    async def _stream_attempts(self, ctx: Context, request: ChatRequest, plan: Plan, send: Send) -> None:
        outcome = ctx.outcome
        try:
            target, end = await self._attempts(ctx, request, plan, partial(self._stream_once, send=send))
        except MuxError as error:
            _failed(outcome, error)
            return await send_error(send, error)
        payloads = end.payloads
        if end.error is None:
            outcome.status = 200
            usage = outcome.usage
            if request.stream_options and request.stream_options.include_usage and usage is not None:
                payloads.append(usage_chunk(end_id(ctx), int(time()), outcome.model or target.model, usage))
        if ctx.mlx is not None and ctx.mlx.trace:
            payloads.append(trace_chunk(end_id(ctx), int(time()), outcome.model or target.model,
                                        decision_trace(plan, ctx.trace)))
        tail = b"".join(map(frame, payloads))
        if end.error is None:
            tail += DONE
        else:
            _failed(outcome, end.error)
            tail += frame(render_error(end.error.message, end.error.type, end.error.param, end.error.code))
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _stream_once(self, ctx: Context, target: Target, call: Call, upstream: UpstreamRequest,
                           timeout_s: float, *, send: Send) -> StreamEnd:
        """Run one streamed attempt up to its last payloads (the caller sends them and ends the stream).

        Raises ``MuxError`` if it fails before its first chunk was sent to the client; after that, answers
        the error in ``StreamEnd.error``."""
        provider = target.provider
        adapter = self.adapters[provider.type]
        translator = adapter.stream_translator(provider, call)
        parser = SSEParser()
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout_s
        first_byte_s = provider.first_byte_timeout_s or timeout_s
        idle_s = provider.idle_timeout_s
        outcome = ctx.outcome
        begun = perf_counter()
        ttfb_ms: float | None = None
        phase = "first byte"
        response = None
        error: MuxError | None = None
        payloads: list[bytes] = []
        try:
            async with Deadline(min(deadline, now + first_byte_s)) as timer:
                response = await self.transport.send(upstream, provider)
                if response.status >= 400:
                    body = await response.read()
                    raise adapter.parse_error(provider, response.status, body, response.headers)
                async for chunk in response.chunks():
                    for event in parser.feed(chunk):
                        payloads.extend(translator.feed(event))
                    if payloads:
                        if ttfb_ms is None:
                            ttfb_ms = round((perf_counter() - begun) * 1000, 3)
                            self._settle(outcome, target, translator.model, None)
                            outcome.stream_id = translator.id
                            await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
                        await send({"type": "http.response.body", "body": b"".join(map(frame, payloads)),
                                    "more_body": True})
                        payloads = []
                    if ttfb_ms is not None:
                        phase = "next chunk"
                        timer.move(min(deadline, loop.time() + idle_s))
                for event in parser.close():
                    payloads.extend(translator.feed(event))
                payloads.extend(translator.close())
        except TimeoutError:
            total = loop.time() >= deadline - 0.001
            error = UpstreamTimeout(f"Provider '{provider.name}' exceeded its {'total time' if total else phase} limit.")
        except MuxError as exc:
            error = exc
        finally:
            if response is not None:
                await response.close()
        if error is not None and ttfb_ms is None:
            raise error
        self._settle(outcome, target, translator.model, translator.usage)
        if ttfb_ms is None:  # a stream that ended well without a single content chunk
            ttfb_ms = round((perf_counter() - begun) * 1000, 3)
            outcome.stream_id = translator.id
            await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        return StreamEnd(payloads=payloads, error=error, ttfb_ms=ttfb_ms)

    # --- shared ----------------------------------------------------------------------------------------

    @staticmethod
    def _call(ctx: Context, request: ChatRequest, target: Target) -> Call:
        end_user = ctx.mlx.end_user if ctx.mlx is not None else None
        return Call(request=request, fields=ctx.fields or {}, model=target.model, end_user=end_user,
                    body=ctx.body or b"")

    def _build(self, ctx: Context, target: Target, call: Call) -> UpstreamRequest:
        """Ask the adapter for the upstream request (it raises ``MuxError`` to refuse the request); its
        translation notes go to the decision trace."""
        upstream = self.adapters[target.provider.type].build_request(target.provider, call)
        if upstream.notes:
            ctx.trace.append({"type": "translation", "target": target.label, "notes": list(upstream.notes)})
        return upstream

    def _settle(self, outcome: Outcome, target: Target, model: str | None, usage: Usage | None) -> None:
        settle(outcome, self.routing.catalog, target, model, usage)


async def exchange(transport: Transport, upstream: UpstreamRequest, provider: ProviderConfig,
                   timeout_s: float) -> tuple[int, Mapping[str, str], bytes]:
    """Send a non-streamed upstream request and read its whole answer within ``timeout_s`` (and the provider's
    first-byte limit, if set); answer status, headers and body. Raises ``UpstreamTimeout`` or
    ``UpstreamError``."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    first_byte_s = provider.first_byte_timeout_s
    waiting = "start answering" if first_byte_s is not None and first_byte_s < timeout_s else "answer"
    try:
        async with Deadline(now + min(timeout_s, first_byte_s or timeout_s)) as deadline:
            response = await transport.send(upstream, provider)
            if waiting == "start answering":
                waiting = "answer"
                deadline.move(now + timeout_s)
            body = await response.read()
    except TimeoutError:
        raise UpstreamTimeout(f"Provider '{provider.name}' did not {waiting} in time.") from None
    return response.status, response.headers, body


def settle(outcome: Outcome, catalog: Catalog, target: Target, model: str | None, usage: Usage | None) -> None:
    """Record in ``outcome`` the provider and model that answered and, once usage is known, its cost (also
    written into ``usage.cost``)."""
    outcome.provider = target.provider.name
    outcome.model = model or target.model
    outcome.usage = usage
    outcome.cost_usd = None
    if usage is None:
        return
    price = catalog.price(target.provider, outcome.model) or catalog.price(target.provider, target.model)
    if price is not None:
        outcome.cost_usd = usage.cost = cost_of(usage, price)


def retryable(error: MuxError, retry_on: frozenset[int | str]) -> bool:
    """Whether ``error`` may be retried or failed over under a plan's ``retry_on`` classes."""
    if not isinstance(error, UpstreamError) or not error.retryable:
        return False
    status = getattr(error, "upstream_status", None)
    if isinstance(error, UpstreamTimeout):
        return "timeout" in retry_on
    if error.code in ("upstream_unreachable", "upstream_connection_lost"):
        return "connect" in retry_on
    if status is not None:
        return status in retry_on or (status >= 500 and "5xx" in retry_on)
    return "5xx" in retry_on  # a malformed, empty or cut answer is the provider's fault, like a 5xx


def end_id(ctx: Context) -> str:
    return ctx.outcome.stream_id or f"chatcmpl-{ctx.request_id or 'mux'}"


def _event(ctx: Context, target: Target, status: str, started: float | None = None, *, error: MuxError | None = None,
           retry: int = 0, reason: str | None = None, ttfb_ms: float | None = None, usage: Usage | None = None,
           cost: float | None = None) -> None:
    event: dict[str, Any] = {"target": target.label, "status": status}
    if started is not None:
        event["latency_ms"] = round((perf_counter() - started) * 1000, 3)
    if ttfb_ms is not None:
        event["ttfb_ms"] = ttfb_ms
    if retry:
        event["retry"] = retry
    if error is not None:
        event["error"] = error.code
        event["http_status"] = getattr(error, "upstream_status", None) or error.status
    if reason is not None:
        event["reason"] = reason
    if usage is not None:
        event["prompt_tokens"] = usage.prompt_tokens
        event["completion_tokens"] = usage.completion_tokens
    if cost is not None:
        event["cost_usd"] = cost
    ctx.trace.append(event)


def _note(ctx: Context, text: str) -> None:
    ctx.trace.append({"type": "policy", "note": text})


def _failed(outcome: Outcome, error: MuxError) -> None:
    outcome.status = error.status
    outcome.error_type = error.code
