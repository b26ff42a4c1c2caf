"""Embeddings: the terminal handler of ``POST /v1/embeddings`` for providers whose adapter serves them.

Reads the body itself (embeddings are not chat requests, so the chat layers pass them by) and writes
``ctx.outcome`` (provider, model, usage, cost), so TraceLayer's headers and record cover them too. A client
that goes away cancels the upstream request (the outcome says 499 ``client_disconnected``). The model
resolves like a chat model (``provider/model``, listed or prefixed names); ``usage.cost`` is added where
the price is known.
"""

from __future__ import annotations

import msgspec

from .asgi import ClientWatch, Receive, Scope, Send, send_error, send_json
from .context import body_of, context_of
from .dispatch import exchange, settle
from .errors import InvalidRequest, MuxError
from .live import LiveRouting
from .providers import ADAPTERS, Adapter
from .providers.base import EmbeddingCall
from .transport import Transport
from .wire import Usage, decode_embeddings, with_fields

EMBEDDINGS_PATHS = frozenset({"/v1/embeddings", "/api/v1/embeddings"})


class Embeddings:
    reads: frozenset[str] = frozenset()
    writes = frozenset({"outcome"})

    def __init__(self, *, routing: LiveRouting, transport: Transport, adapters: dict[str, Adapter] = ADAPTERS,
                 max_body_bytes: int = 10 * 1024 * 1024) -> None:
        self.routing = routing
        self.transport = transport
        self.adapters = adapters
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope)
        outcome = ctx.outcome
        try:
            body, receive = await body_of(scope, receive, self.max_body_bytes)
            request, fields = decode_embeddings(body)
            if request.model.startswith("@"):
                raise InvalidRequest("Routing configs serve chat completions; ask embeddings of a 'provider/model'.",
                                     param="model", code="unsupported_operation")
            target = self.routing.resolver.resolve(request.model)
            provider = target.provider
            adapter = self.adapters[provider.type]
            if not hasattr(adapter, "build_embeddings"):
                raise InvalidRequest(f"Provider '{provider.name}' (type {provider.type}) does not serve embeddings.",
                                     param="model", code="unsupported_operation")
            call = EmbeddingCall(request=request, fields=fields, model=target.model)
            outcome.attempts = 1
            with ClientWatch(receive) as watch:  # a client that goes away cancels the upstream request
                status, headers, answer = await exchange(self.transport, adapter.build_embeddings(provider, call),
                                                         provider, provider.timeout_s)
            if watch.gone:
                outcome.status, outcome.error_type = 499, "client_disconnected"
                return
            if status >= 400:
                raise adapter.parse_error(provider, status, answer, headers)
            result = adapter.parse_embeddings(provider, call, answer)
        except MuxError as error:
            outcome.status, outcome.error_type = error.status, error.code
            return await send_error(send, error)
        settle(outcome, self.routing.catalog, target, result.model, result.usage)
        outcome.status = 200
        reply = result.body
        if outcome.cost_usd is not None and result.usage is not None:
            reply = _with_cost(reply, result.usage)
        await send_json(send, 200, reply)


def _with_cost(body: bytes, usage: Usage) -> bytes:
    """Answer the embedding list with ``usage.cost`` added to its usage object, which otherwise stays as the
    provider sent it (OpenAI's embedding usage is ``prompt_tokens`` and ``total_tokens`` only, not chat's)."""
    fields = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    current = msgspec.json.decode(fields["usage"]) if "usage" in fields else None
    if not isinstance(current, dict):
        current = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
    current["cost"] = usage.cost
    return with_fields(body, {"usage": current})
