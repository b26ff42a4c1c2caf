"""Dispatch: the terminal handler of ``POST /v1/chat/completions``. It executes the plan's attempts.

Reads ``ctx.request``/``ctx.fields`` (decoding the body itself if no layer did), ``ctx.plan`` (planning a
single target itself if no RouterLayer ran) and ``ctx.mlx``; writes ``ctx.outcome`` and appends one trace
event per attempt. Transport, timeouts and failover live here once; provider knowledge stays in adapters.

Streams: nothing is sent until an attempt yields its first chunk, so an attempt that fails before that
(error status, connect error, first-byte timeout, empty or malformed first event) falls over unseen. After
the first byte a failure is one in-band error event and the stream ends without ``[DONE]``. A client that
disconnects cancels the upstream request and frees its connection.
"""

from __future__ import annotations

import asyncio
from time import perf_counter, time
from typing import Any

from .asgi import Receive, Scope, Send, send_error, send_json
from .context import Context, Outcome, context_of, request_of
from .errors import MuxError, NoRouteAvailable, UpstreamTimeout, render_error
from .pricing import PRICES, Price, cost_of, price_of
from .providers import ADAPTERS, Adapter, Call
from .routing import Plan, Resolver, Target, plan_for
from .sse import DONE, SSEParser, frame
from .transport import Transport
from .wire import ChatRequest, Usage, usage_chunk, with_usage

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Dispatch:
    """Execute the plan for a chat completion and answer it, streamed or not."""

    reads: frozenset[str] = frozenset()  # plan and mlx are used when present, not required
    reads_after: frozenset[str] = frozenset()
    writes = frozenset({"outcome"})

    def __init__(
        self,
        *,
        resolver: Resolver,
        transport: Transport,
        adapters: dict[str, Adapter] = ADAPTERS,
        prices: dict[str, Price] = PRICES,
        max_body_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.resolver = resolver
        self.transport = transport
        self.adapters = adapters
        self.prices = prices
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope)
        try:
            request, receive = await request_of(scope, receive, self.max_body_bytes)
            plan = ctx.plan if ctx.plan is not None else plan_for(request, self.resolver)
        except MuxError as error:
            _failed(ctx.outcome, error)
            return await send_error(send, error)
        if not plan.targets:
            error = NoRouteAvailable("No target is left to serve this request.")
            _failed(ctx.outcome, error)
            return await send_error(send, error)
        if request.stream:
            await self._stream(ctx, request, plan, receive, send)
        else:
            await self._complete(ctx, request, plan, send)

    # --- non-streaming ---------------------------------------------------------------------------------

    async def _complete(self, ctx: Context, request: ChatRequest, plan: Plan, send: Send) -> None:
        outcome = ctx.outcome
        error: MuxError | None = None
        for target in plan.targets:
            call = self._call(ctx, request, target)
            started = perf_counter()
            try:
                completion = await self._complete_once(ctx, target, call)
            except MuxError as exc:
                error = exc
                self._record(ctx, target, started, exc)
                if not exc.retryable:
                    break
                continue
            self._record(ctx, target, started, None)
            body = completion.body
            self._settle(outcome, target, completion.model, completion.usage)
            if outcome.cost_usd is not None and completion.usage is not None:
                body = with_usage(body, completion.usage)
            outcome.status = 200
            return await send_json(send, 200, body)
        assert error is not None
        _failed(outcome, error)
        await send_error(send, error)

    async def _complete_once(self, ctx: Context, target: Target, call: Call):
        provider = target.provider
        adapter = self.adapters[provider.type]
        upstream = self._build(ctx, adapter, target, call)
        try:
            async with asyncio.timeout(provider.timeout_s):
                if provider.first_byte_timeout_s is None:
                    response = await self.transport.send(upstream, provider)
                else:
                    async with asyncio.timeout(provider.first_byte_timeout_s):
                        response = await self.transport.send(upstream, provider)
                body = await response.read()
        except TimeoutError:
            raise UpstreamTimeout(f"Provider '{provider.name}' did not answer in time.") from None
        if response.status >= 400:
            raise adapter.parse_error(provider, response.status, body, response.headers)
        return adapter.parse_response(provider, call, body)

    # --- streaming -------------------------------------------------------------------------------------

    async def _stream(self, ctx: Context, request: ChatRequest, plan: Plan, receive: Receive, send: Send) -> None:
        ctx.outcome.streamed = True
        work = asyncio.ensure_future(self._stream_attempts(ctx, request, plan, send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
            watch.cancel()
        if work.cancelled() or not work.done():
            try:
                await work
            except asyncio.CancelledError:
                pass
            ctx.outcome.status = 499
            ctx.outcome.error_type = "client_disconnected"
            return
        work.result()

    async def _stream_attempts(self, ctx: Context, request: ChatRequest, plan: Plan, send: Send) -> None:
        error: MuxError | None = None
        for target in plan.targets:
            call = self._call(ctx, request, target)
            started = perf_counter()
            try:
                await self._stream_once(ctx, target, call, send)
            except MuxError as exc:  # raised only before the first byte reached the client
                error = exc
                self._record(ctx, target, started, exc)
                if not exc.retryable:
                    break
                continue
            self._record(ctx, target, started, None, partial=ctx.outcome.error_type is not None)
            return
        assert error is not None
        _failed(ctx.outcome, error)
        await send_error(send, error)

    async def _stream_once(self, ctx: Context, target: Target, call: Call, send: Send) -> None:
        """Run one streamed attempt. Raises ``MuxError`` if it fails before its first chunk was sent;
        after that, failures end the stream with one error event."""
        provider = target.provider
        adapter = self.adapters[provider.type]
        upstream = self._build(ctx, adapter, target, call)
        translator = adapter.stream_translator(provider, call)
        parser = SSEParser()
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + provider.timeout_s
        first_byte_s = provider.first_byte_timeout_s or provider.timeout_s
        idle_s = provider.idle_timeout_s
        outcome = ctx.outcome
        started = False
        phase = "first byte"
        response = None
        error: MuxError | None = None
        try:
            async with asyncio.timeout(min(deadline, now + first_byte_s)) as timer:
                response = await self.transport.send(upstream, provider)
                if response.status >= 400:
                    body = await response.read()
                    raise adapter.parse_error(provider, response.status, body, response.headers)
                async for chunk in response.chunks():
                    payloads: list[bytes] = []
                    for event in parser.feed(chunk):
                        payloads.extend(translator.feed(event))
                    if payloads:
                        if not started:
                            started = True
                            self._settle(outcome, target, translator.model, None)
                            await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
                        await send({"type": "http.response.body", "body": b"".join(map(frame, payloads)),
                                    "more_body": True})
                    if started:
                        phase = "next chunk"
                        timer.reschedule(min(deadline, loop.time() + idle_s))
                payloads = []
                for event in parser.close():
                    payloads.extend(translator.feed(event))
                payloads.extend(translator.close())
        except TimeoutError:
            total = loop.time() >= deadline - 0.001
            error = UpstreamTimeout(
                f"Provider '{provider.name}' exceeded its {'total time' if total else phase} limit."
            )
        except MuxError as exc:
            error = exc
        finally:
            if response is not None:
                await response.close()
        if error is not None and not started:
            raise error
        self._settle(outcome, target, translator.model, translator.usage)
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        if error is not None:
            _failed(outcome, error)
            tail = frame(render_error(error.message, error.type, error.param, error.code))
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            return
        outcome.status = 200
        if call.include_usage and translator.usage is not None:
            payloads.append(usage_chunk(translator.id or "", translator.created or int(time()),
                                        translator.model or target.model, translator.usage))
        tail = b"".join(map(frame, payloads)) + DONE
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # --- shared ----------------------------------------------------------------------------------------

    def _call(self, ctx: Context, request: ChatRequest, target: Target) -> Call:
        ctx.outcome.attempts += 1
        end_user = ctx.mlx.end_user if ctx.mlx is not None else None
        return Call(request=request, fields=ctx.fields or {}, model=target.model, end_user=end_user)

    @staticmethod
    def _build(ctx: Context, adapter: Adapter, target: Target, call: Call):
        """Ask the adapter for the upstream request; its translation notes go to the decision trace."""
        upstream = adapter.build_request(target.provider, call)
        if upstream.notes:
            ctx.trace.append({"type": "translation", "target": target.label, "notes": list(upstream.notes)})
        return upstream

    def _settle(self, outcome: Outcome, target: Target, model: str | None, usage: Usage | None) -> None:
        """Record the provider and model that answered and, once usage is known, its cost."""
        outcome.provider = target.provider.name
        outcome.model = model or target.model
        if usage is None:
            return
        outcome.usage = usage
        price = price_of(target.provider.type, outcome.model, self.prices) or price_of(
            target.provider.type, target.model, self.prices
        )
        if price is not None:
            outcome.cost_usd = usage.cost = cost_of(usage, price)

    @staticmethod
    def _record(ctx: Context, target: Target, started: float, error: MuxError | None, partial: bool = False) -> None:
        event: dict[str, Any] = {
            "type": "attempt",
            "target": target.label,
            "latency_ms": round((perf_counter() - started) * 1000, 3),
            "status": "partial" if partial else ("ok" if error is None else "error"),
        }
        if error is not None:
            event["error"] = error.code
            event["http_status"] = error.status
        ctx.trace.append(event)


def _failed(outcome: Outcome, error: MuxError) -> None:
    outcome.status = error.status
    outcome.error_type = error.code


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
