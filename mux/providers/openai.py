"""OpenAI Chat Completions (``POST {base_url}/chat/completions``, Bearer auth).

The request body is the client's own, minus the gateway's keys, with ``model`` set to the target's name:
parameters mux does not know reach OpenAI untouched. Responses and stream chunks are relayed as the very
bytes OpenAI sent; mux only peeks at ``model``, ``usage`` and in-band ``error`` objects. Streams always ask
OpenAI for the final usage chunk (so every request is accounted) and drop it again when the client did not.
Wire format: the OpenAI API reference, "Create chat completion" and "The chat completion chunk object".

Reasoning models (the catalog's ``reasoning_model``: o-series, gpt-5) refuse ``max_tokens`` ("not compatible
with o1 series models", the reference says; the API answers 400 ``unsupported_parameter`` "Use
'max_completion_tokens' instead.") and any ``temperature`` or ``top_p`` but the default 1 (400
``unsupported_value`` "Only the default (1) value is supported."). For them ``max_tokens`` is sent as
``max_completion_tokens`` (or left out when the client set that too), and another temperature or top_p is dropped
with a translation note, or refused under ``provider.require_parameters``. A model the catalog does not know is
forwarded as asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import msgspec

from mux.catalog.models import BUILTIN
from mux.errors import MuxError, UpstreamError, redact
from mux.providers.base import (
    Call,
    Completion,
    EmbeddingCall,
    UpstreamRequest,
    drop_parameter,
    malformed,
    upstream_error,
)
from mux.sse import SSEEvent
from mux.wire.openai import GATEWAY_KEYS, Usage, embeddings_peek_decoder, encoder, forwardable_fields, peek_decoder

if TYPE_CHECKING:
    from mux.config.schema import ProviderConfig

_INCLUDE_USAGE = msgspec.Raw(b'{"include_usage":true}')


class OpenAIAdapter:
    """OpenAI and every server that speaks its chat-completions dialect unchanged."""

    type_name: ClassVar[str] = "openai"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    env_keys: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    model_prefixes: ClassVar[tuple[str, ...]] = (
        "gpt-",
        "o1",
        "o3",
        "o4",
        "chatgpt-",
        "text-embedding-",
        "codex-",
        "computer-use-",
    )

    def build_request(self, provider: ProviderConfig, call: Call) -> UpstreamRequest:
        """Answer the upstream request: the client's body minus gateway keys, ``model`` replaced, and the
        parameters of a reasoning model translated."""
        notes: list[str] = []
        reasoning = self.reasoning_model(provider, call)
        body = None if reasoning else self.unchanged_body(call)
        if body is None:
            fields = self.upstream_fields(call, notes)
            if reasoning:
                _for_reasoning_model(fields, call, notes)
            body = encoder.encode(fields)
        return UpstreamRequest(
            "POST", self.url(provider, call.model, "/chat/completions"), self.headers(provider), body, notes
        )

    @staticmethod
    def reasoning_model(provider: ProviderConfig, call: Call) -> bool:
        """Whether the catalog marks the attempt's model a reasoning model (the router's entry if the call
        carries it, else the built-in one); an unknown model is not."""
        info = call.info if call.info is not None else BUILTIN.info(provider, call.model)
        return bool(info is not None and info.reasoning_model)

    def unchanged_body(self, call: Call) -> bytes | None:
        """The client's body itself, when forwarding needs no change: no gateway keys, the same model name, and
        no usage option to add (a stream whose client asked for usage, or no stream)."""
        if (
            call.body
            and call.request.model == call.model
            and GATEWAY_KEYS.isdisjoint(call.fields)
            and (not call.stream or call.include_usage)
        ):
            return call.body
        return None

    def upstream_fields(self, call: Call, notes: list[str]) -> dict[str, msgspec.Raw]:
        """Answer the body fields to send; ``notes`` collects decisions for the trace."""
        fields = self.client_fields(call)
        if call.stream and not call.include_usage:  # always account usage; Dispatch relays it if asked
            fields["stream_options"] = _stream_options_with_usage(fields.get("stream_options"))
        return fields

    @staticmethod
    def client_fields(call: Call) -> dict[str, msgspec.Raw]:
        """Answer the client's own fields minus gateway keys, with ``model`` set to the attempt's model."""
        fields = forwardable_fields(call.fields)
        fields["model"] = msgspec.Raw(encoder.encode(call.model))
        return fields

    def url(self, provider: ProviderConfig, model: str, path: str) -> str:
        """Answer the URL of an operation (``/chat/completions``, ``/embeddings``) for ``model``."""
        return provider.url_for(path)

    def headers(self, provider: ProviderConfig) -> dict[str, str]:
        headers = {"content-type": "application/json", **provider.headers}
        if provider.api_key:
            headers["authorization"] = "Bearer " + provider.api_key
        return headers

    def parse_response(self, provider: ProviderConfig, call: Call, body: bytes) -> Completion:
        """Answer OpenAI's body unchanged, with its usage and model read for accounting."""
        try:
            peek = peek_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise malformed(provider, "a body that is not a chat completion") from None
        if peek.error is not None:
            raise _in_band_error(provider, peek.error)
        if peek.choices is None:
            raise malformed(provider, "a chat completion without 'choices'")
        return Completion(
            body=body, usage=peek.usage, model=peek.model, response_id=peek.id, finish_reason=peek.finish_reason()
        )

    def build_embeddings(self, provider: ProviderConfig, call: EmbeddingCall) -> UpstreamRequest:
        """Answer ``POST {base_url}/embeddings`` with the client's fields minus gateway keys, and the target's
        model."""
        fields = forwardable_fields(call.fields)
        fields["model"] = msgspec.Raw(encoder.encode(call.model))
        return UpstreamRequest(
            "POST", self.url(provider, call.model, "/embeddings"), self.headers(provider), encoder.encode(fields)
        )

    def parse_embeddings(self, provider: ProviderConfig, call: EmbeddingCall, body: bytes) -> Completion:
        """Answer OpenAI's embedding list unchanged, with its usage read for accounting."""
        try:
            peek = embeddings_peek_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise malformed(provider, "a body that is not an embedding list") from None
        return Completion(body=body, usage=peek.usage, model=peek.model)

    def parse_error(self, provider: ProviderConfig, status: int, body: bytes, headers: Mapping[str, str]) -> MuxError:
        return upstream_error(provider, status, body, headers)

    def stream_translator(self, provider: ProviderConfig, call: Call) -> OpenAIStream:
        return OpenAIStream(provider)


def _for_reasoning_model(fields: dict[str, msgspec.Raw], call: Call, notes: list[str]) -> None:
    """Rewrite ``fields`` for a reasoning model: ``max_tokens`` becomes ``max_completion_tokens`` (dropped when
    that is set too); a temperature or top_p other than 1 is dropped, or refused if the request insists."""
    request = call.request
    if "max_tokens" in fields:
        raw = fields.pop("max_tokens")
        if request.max_completion_tokens is None and request.max_tokens is not None:
            fields["max_completion_tokens"] = raw
            notes.append(f"renamed 'max_tokens' to 'max_completion_tokens': {call.model} is a reasoning model")
        elif request.max_tokens is not None:
            notes.append(f"dropped 'max_tokens': 'max_completion_tokens' is set and {call.model} takes only that")
    for name, value in (("temperature", request.temperature), ("top_p", request.top_p)):
        if value is not None and value != 1:
            drop_parameter(name, f"{call.model} takes only the default value (1)", notes, call.insists)
            fields.pop(name, None)


def _stream_options_with_usage(current: msgspec.Raw | None) -> msgspec.Raw:
    if current is None:
        return _INCLUDE_USAGE
    options = msgspec.json.decode(current)
    options = options if isinstance(options, dict) else {}
    options["include_usage"] = True
    return msgspec.Raw(encoder.encode(options))


def _in_band_error(provider: ProviderConfig, error: dict) -> UpstreamError:
    message = error.get("message") if isinstance(error.get("message"), str) else "stream failed"
    code = error.get("code") if isinstance(error.get("code"), str) else "upstream_error"
    return UpstreamError(
        redact(f"Provider '{provider.name}' reported an error: {message}", (provider.api_key,)), code=code
    )


class OpenAIStream:
    """Relays OpenAI chunks as they are; keeps the final usage chunk back (Dispatch re-emits it with the cost,
    if the client asked for it); knows whether ``[DONE]`` arrived."""

    __slots__ = ("provider", "usage", "model", "id", "created", "done")

    def __init__(self, provider: ProviderConfig) -> None:
        self.provider = provider
        self.usage: Usage | None = None
        self.model: str | None = None
        self.id: str | None = None
        self.created: int | None = None
        self.done = False

    def feed(self, event: SSEEvent) -> list[bytes]:
        """Answer the chunk payloads to relay for one upstream event."""
        data = event.data
        if data == b"[DONE]":
            self.done = True
            return []
        if self.done:
            return []
        try:
            peek = peek_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise malformed(self.provider, "a stream event that is not a JSON chunk") from None
        if peek.error is not None:
            raise _in_band_error(self.provider, peek.error)
        if self.id is None:
            self.id, self.created, self.model = peek.id, peek.created, peek.model
        if peek.usage is not None:
            self.usage = peek.usage
            if not peek.choices:
                return []
        return [data]

    def close(self) -> list[bytes]:
        """The upstream closed: fine after ``[DONE]``, a cut before it."""
        if not self.done:
            raise UpstreamError(
                f"Provider '{self.provider.name}' ended the stream before it was complete.", code="upstream_stream_cut"
            )
        return []


ADAPTER = OpenAIAdapter()
