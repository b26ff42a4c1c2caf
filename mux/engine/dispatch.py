"""Dispatch: the terminal handler of every LLM front door. It executes the plan and answers in the dialect of
the request's ingress.

Reads ``ctx.ingress``, ``ctx.request``/``ctx.fields`` (decoding the body itself if no layer did), ``ctx.plan``
(planning itself if no RouterLayer ran) and ``ctx.mlx``; writes ``ctx.outcome`` (with the answer's ``id`` and
``finish_reason``, peeked from the answer or the stream's last chunk); the attempts append the
decision-trace events. The attempt policy is ``mux.engine.attempts``; one attempt on the wire is
``mux.engine.exchange``; provider knowledge stays in the adapters.

Streams: nothing is sent until an attempt yields its first chunk. A client that disconnects, streamed or not,
cancels the upstream request and frees its connection; nothing more is sent and ``ctx.outcome`` says 499
``client_disconnected``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Mapping
from functools import partial
from time import time
from typing import Any

import msgspec

from mux.asgi import ClientWatch, Receive, Scope, Send, send_json
from mux.catalog import Catalog
from mux.config.schema import CascadeConfig
from mux.context import Context, Note, Outcome
from mux.engine.attempts import StreamEnd, run_attempts
from mux.engine.cascade import Cascade
from mux.engine.exchange import exchange, relay_stream
from mux.engine.settle import answered_by, charge, with_total
from mux.engine.transport import Transport
from mux.errors import ClientDisconnected, InvalidRequest, MuxError, NotFound
from mux.ingress import Ingress, deny, ingress_of, with_request
from mux.providers import ADAPTERS, Adapter, Call, Completion, UpstreamRequest
from mux.providers.base import EmbeddingCall
from mux.routing.decision import decision_trace
from mux.routing.live import LiveRouting
from mux.routing.plan import Plan, Target
from mux.wire.openai import ChatRequest, EmbeddingsRequest, trace_chunk, usage_chunk

_GONE = ClientDisconnected("The client went away before its answer was complete.")


class Dispatch:
    """Execute the plan of an LLM request and answer it, streamed or not."""

    reads: frozenset[str] = frozenset()  # plan and mlx are used when present, not required
    reads_after: frozenset[str] = frozenset()
    writes = frozenset({"outcome"})

    def __init__(
        self,
        *,
        routing: LiveRouting,
        transport: Transport,
        adapters: dict[str, Adapter] = ADAPTERS,
        max_body_bytes: int = 10 * 1024 * 1024,
        rng: random.Random | None = None,
    ) -> None:
        self.routing = routing
        self.transport = transport
        self.adapters = adapters
        self.max_body_bytes = max_body_bytes
        self.rng = rng or random.Random()
        self.cascade = Cascade()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if ingress_of(scope) is None:
            return deny(scope, send, NotFound(f"No endpoint {scope.get('method')} {scope.get('path')}."))
        return with_request(scope, receive, send, self.max_body_bytes, self._dispatch)

    def _dispatch(self, ctx: Context, request: Any, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        plan = ctx.plan
        if plan is None:
            mlx = ctx.mlx
            try:
                plan = ctx.plan = self.routing.router.plan(
                    request, end_user=mlx.end_user if mlx else None, session=mlx.session_id if mlx else None
                )
            except MuxError as error:
                _failed(ctx.outcome, error)
                return deny(scope, send, error)
        ingress = ctx.ingress
        assert ingress is not None  # ingress_of answered it before the body was decoded
        if ingress.operation == "embeddings":
            build = partial(self._build_embeddings, ctx, request)
            return self._complete(ctx, ingress, plan, scope, receive, send, build, partial(self._embed_once, ctx))
        if request.stream:
            return self._stream(ctx, ingress, request, plan, scope, receive, send)
        return self._complete(
            ctx,
            ingress,
            plan,
            scope,
            receive,
            send,
            partial(self._build_chat, ctx, request),
            partial(self._chat_once, ctx),
            partial(self._check, request),
        )

    # --- preparing an attempt: the adapter builds the upstream request, or refuses it -------------------

    def _build_chat(self, ctx: Context, request: ChatRequest, target: Target) -> tuple[Call, UpstreamRequest]:
        call = _call(ctx, request, target, self.routing.catalog)
        return call, _built(ctx, target, self.adapters[target.provider.type].build_request(target.provider, call))

    def _build_embeddings(
        self, ctx: Context, request: EmbeddingsRequest, target: Target
    ) -> tuple[EmbeddingCall, UpstreamRequest]:
        provider = target.provider
        adapter: Any = self.adapters[provider.type]
        if not hasattr(adapter, "build_embeddings"):
            raise InvalidRequest(
                f"Provider '{provider.name}' (type {provider.type}) does not serve embeddings.",
                param="model",
                code="unsupported_operation",
            )
        call = EmbeddingCall(request=request, fields=ctx.fields or {}, model=target.model)
        return call, _built(ctx, target, adapter.build_embeddings(provider, call))

    # --- non-streamed ----------------------------------------------------------------------------------

    async def _complete(
        self,
        ctx: Context,
        ingress: Ingress,
        plan: Plan,
        scope: Scope,
        receive: Receive,
        send: Send,
        build: Any,
        once: Any,
        check: Any = None,
    ) -> None:
        """Answer the plan's completion; a client that goes away cancels the upstream request."""
        outcome = ctx.outcome
        with ClientWatch(receive):  # a ``with`` block, not a coroutine: no frame added to the request
            try:
                _, completion = await run_attempts(ctx, plan, build, once, self.routing.health, self.rng, check)
            except MuxError as error:
                _failed(outcome, error)
                return await deny(scope, send, error)
            outcome.status = 200
            if ingress.operation == "chat":
                if completion.response_id is not None:  # the adapter read them already
                    outcome.response_id, outcome.finish_reason = completion.response_id, completion.finish_reason
                else:
                    _peek_answer(outcome, completion.body)
            replace: dict[str, Any] = {}
            usage = with_total(completion.usage, outcome) if outcome.cost_usd is not None else None
            if usage is not None:
                replace["usage"] = usage
            if ctx.mlx is not None and ctx.mlx.trace:
                replace["mlx:trace"] = decision_trace(plan, ctx.trace)
            return await send_json(send, 200, ingress.answer(completion.body, replace))
        _failed(outcome, _GONE)  # reached only when the watch absorbed the client's going away

    def _chat_once(
        self, ctx: Context, target: Target, prepared: tuple[Call, UpstreamRequest], timeout_s: float
    ) -> Awaitable[Completion]:
        """Answer the awaitable of one chat attempt: the exchange, which parses and charges its answer (no
        coroutine of this method stays in the request's await chain)."""
        call, upstream = prepared
        provider = target.provider
        adapter = self.adapters[provider.type]

        def answer(status: int, headers: Mapping[str, str], body: bytes) -> Completion:
            if status >= 400:
                raise adapter.parse_error(provider, status, body, headers)
            completion = adapter.parse_response(provider, call, body)
            charge(ctx.outcome, self.routing.catalog, target, completion.model, completion.usage)
            return completion

        return exchange(self.transport, upstream, provider, timeout_s, answer)

    def _embed_once(
        self, ctx: Context, target: Target, prepared: tuple[EmbeddingCall, UpstreamRequest], timeout_s: float
    ) -> Awaitable[Completion]:
        """Answer the awaitable of one embeddings attempt, as ``_chat_once``."""
        call, upstream = prepared
        provider = target.provider
        adapter: Any = self.adapters[provider.type]

        def answer(status: int, headers: Mapping[str, str], body: bytes) -> Completion:
            if status >= 400:
                raise adapter.parse_error(provider, status, body, headers)
            result: Completion = adapter.parse_embeddings(provider, call, body)
            charge(ctx.outcome, self.routing.catalog, target, result.model, result.usage)
            return result

        return exchange(self.transport, upstream, provider, timeout_s, answer)

    def _check(self, request: ChatRequest, cascade: CascadeConfig, completion: Completion) -> str | None:
        return self.cascade.failure(cascade, request, completion.body)

    # --- streamed --------------------------------------------------------------------------------------

    async def _stream(
        self,
        ctx: Context,
        ingress: Ingress,
        request: ChatRequest,
        plan: Plan,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Stream the plan's answer; a client that goes away cancels the upstream request."""
        ctx.outcome.streamed = True
        with ClientWatch(receive):
            return await self._stream_attempts(ctx, ingress, request, plan, scope, send)
        _failed(ctx.outcome, _GONE)  # reached only when the watch absorbed the client's going away

    async def _stream_attempts(
        self, ctx: Context, ingress: Ingress, request: ChatRequest, plan: Plan, scope: Scope, send: Send
    ) -> None:
        outcome = ctx.outcome
        encoder = ingress.stream()
        once = partial(self._stream_once, ctx, encoder, send)
        try:
            target, end = await run_attempts(
                ctx, plan, partial(self._build_chat, ctx, request), once, self.routing.health, self.rng
            )
        except MuxError as error:
            _failed(outcome, error)
            return await deny(scope, send, error)
        payloads = end.payloads
        outcome.finish_reason = _finish_reason(payloads[-1] if payloads else end.last)
        model = outcome.model or target.model
        if end.error is None:
            outcome.status = 200
            usage = with_total(outcome.usage, outcome)
            if request.stream_options and request.stream_options.include_usage and usage is not None:
                payloads.append(usage_chunk(end_id(ctx), int(time()), model, usage))
        if ctx.mlx is not None and ctx.mlx.trace:
            payloads.append(trace_chunk(end_id(ctx), int(time()), model, decision_trace(plan, ctx.trace)))
        tail = encoder.chunks(payloads)
        if end.error is None:
            tail += encoder.end()
        else:
            _failed(outcome, end.error)
            tail += encoder.fail(end.error)
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _stream_once(
        self,
        ctx: Context,
        encoder: Any,
        send: Send,
        target: Target,
        prepared: tuple[Call, UpstreamRequest],
        timeout_s: float,
    ) -> StreamEnd:
        call, upstream = prepared
        provider = target.provider
        adapter = self.adapters[provider.type]
        translator = adapter.stream_translator(provider, call)
        outcome = ctx.outcome

        def started(translator: Any) -> None:
            answered_by(outcome, target, translator.model)
            outcome.stream_id = outcome.response_id = translator.id

        end = await relay_stream(
            self.transport, upstream, provider, adapter, translator, encoder, send, timeout_s, started
        )
        charge(outcome, self.routing.catalog, target, translator.model, translator.usage)
        return end


def _call(ctx: Context, request: ChatRequest, target: Target, catalog: Catalog) -> Call:
    end_user = ctx.mlx.end_user if ctx.mlx is not None else None
    return Call(
        request=request,
        fields=ctx.fields or {},
        model=target.model,
        end_user=end_user,
        body=ctx.body or b"",
        info=catalog.info(target.provider, target.model),
    )


def _built(ctx: Context, target: Target, upstream: UpstreamRequest) -> UpstreamRequest:
    """Keep the adapter's translation notes in the decision trace."""
    if upstream.notes:
        ctx.trace.append(Note("translation", target=target.label, notes=list(upstream.notes)))
    return upstream


def end_id(ctx: Context) -> str:
    return ctx.outcome.stream_id or f"chatcmpl-{ctx.request_id or 'mux'}"


class _ChoicePeek(msgspec.Struct, gc=False):
    finish_reason: str | None = None


class _AnswerPeek(msgspec.Struct, gc=False):
    id: str | None = None
    choices: list[_ChoicePeek] = []


_answer_peek = msgspec.json.Decoder(_AnswerPeek)


def _peek(body: bytes | None) -> _AnswerPeek | None:
    if not body:
        return None
    try:
        return _answer_peek.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def _first_finish(answer: _AnswerPeek | None) -> str | None:
    return next((c.finish_reason for c in answer.choices if c.finish_reason), None) if answer else None


def _peek_answer(outcome: Outcome, body: bytes) -> None:
    """Record the ``id`` and ``finish_reason`` of an OpenAI-shaped chat answer."""
    answer = _peek(body)
    if answer is not None:
        outcome.response_id = answer.id
        outcome.finish_reason = _first_finish(answer)


def _finish_reason(chunk: bytes | None) -> str | None:
    """The ``finish_reason`` of a stream's last chunk (translators end a stream with its finishing chunk)."""
    return _first_finish(_peek(chunk))


def _failed(outcome: Outcome, error: MuxError) -> None:
    outcome.status = error.status
    outcome.error_type = error.code
