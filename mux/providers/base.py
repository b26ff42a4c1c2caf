"""The shape every provider adapter has: pure functions from an OpenAI request to upstream bytes and back.

An adapter does no I/O. Dispatch owns the transport, timeouts and retries; it asks the adapter for the
upstream request, hands it the upstream answer, and relays what the adapter translates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Protocol

import msgspec

from mux.catalog.models import ModelInfo
from mux.errors import InvalidRequest, MuxError, UpstreamError, redact
from mux.sse import SSEEvent
from mux.wire.openai import ChatRequest, EmbeddingsRequest, Usage

if TYPE_CHECKING:
    from mux.config.schema import ProviderConfig


class UpstreamRequest(msgspec.Struct, gc=False):
    """One HTTP request to a provider."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    notes: list[str] = []  # translation decisions worth a line in the decision trace (dropped params, ...)


class Call(msgspec.Struct, gc=False):
    """What an adapter reads of one client request: the validated view and the body's raw top-level fields."""

    request: ChatRequest
    fields: dict[str, msgspec.Raw]
    model: str  # the upstream model name chosen for this attempt
    end_user: str | None = None
    body: bytes = b""  # the client's body as it arrived
    info: ModelInfo | None = None  # the router's catalog entry for the target, when the caller gives it

    @property
    def insists(self) -> bool:
        """Whether the request sets ``provider.require_parameters``: a parameter mux would drop is refused."""
        preferences = self.request.provider
        return bool(preferences and preferences.require_parameters)

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for the final usage chunk of a stream."""
        options = self.request.stream_options
        return bool(options and options.include_usage)


class EmbeddingCall(msgspec.Struct, gc=False):
    """What an adapter reads of one embeddings request."""

    request: EmbeddingsRequest
    fields: dict[str, msgspec.Raw]
    model: str


class Completion(msgspec.Struct, gc=False):
    """A translated 2xx answer: the OpenAI-shaped JSON body for the client, with what mux accounts from it."""

    body: bytes
    usage: Usage | None
    model: str | None
    response_id: str | None = None  # the answer's ``id`` (for a chat completion), as the client will see it
    finish_reason: str | None = None  # its first choice's ``finish_reason`` (for a chat completion)


class StreamTranslator(Protocol):
    """Per-stream state: upstream SSE events in, OpenAI chunk payloads (JSON bytes, unframed) out.

    ``feed`` raises ``MuxError`` for an in-band upstream error; ``close`` raises ``UpstreamError`` when the
    upstream ended before its normal end (a cut), so no stream ends cleanly by accident. Usage is never
    emitted as a chunk: it is kept in ``usage``, and Dispatch sends the final usage chunk (with its cost)
    when the client asked for it, using ``id``, ``created`` and ``model`` of the stream."""

    usage: Usage | None
    model: str | None
    id: str | None
    created: int | None

    def feed(self, event: SSEEvent) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class Adapter(Protocol):
    """A provider's whole knowledge: naming, request building, response, stream and error translation."""

    type_name: ClassVar[str]
    default_base_url: ClassVar[str]
    env_keys: ClassVar[tuple[str, ...]]  # environment variables holding an API key, first found wins
    model_prefixes: ClassVar[tuple[str, ...]]  # bare model names this provider serves by default

    def build_request(self, provider: ProviderConfig, call: Call) -> UpstreamRequest: ...

    def parse_response(self, provider: ProviderConfig, call: Call, body: bytes) -> Completion: ...

    def parse_error(
        self, provider: ProviderConfig, status: int, body: bytes, headers: Mapping[str, str]
    ) -> MuxError: ...

    def stream_translator(self, provider: ProviderConfig, call: Call) -> StreamTranslator: ...


class EmbeddingsAdapter(Protocol):
    """What an adapter that serves ``/v1/embeddings`` adds; ``parse_embeddings`` answers OpenAI's list shape."""

    def build_embeddings(self, provider: ProviderConfig, call: EmbeddingCall) -> UpstreamRequest: ...

    def parse_embeddings(self, provider: ProviderConfig, call: EmbeddingCall, body: bytes) -> Completion: ...


class _ErrorDetail(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    param: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None


_error_body_decoder = msgspec.json.Decoder(_ErrorBody)

# Upstream status -> (status the client sees, OpenAI code). A provider's 401/403 is the gateway's problem,
# never the client's: it becomes a 502 so clients do not discard a valid key of theirs.
_STATUS_MAP: dict[int, tuple[int, str]] = {
    400: (400, "upstream_bad_request"),
    401: (502, "upstream_auth_failed"),
    402: (502, "upstream_billing"),  # the gateway's account with the provider, never the client's request
    403: (502, "upstream_forbidden"),
    404: (404, "upstream_not_found"),
    408: (504, "upstream_timeout"),
    409: (409, "upstream_conflict"),
    413: (413, "upstream_request_too_large"),
    422: (400, "upstream_bad_request"),
    429: (429, "upstream_rate_limited"),
    500: (502, "upstream_server_error"),
    502: (502, "upstream_bad_gateway"),
    503: (503, "upstream_unavailable"),
    504: (504, "upstream_timeout"),
    529: (503, "upstream_overloaded"),
}

_CLIENT_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def drop_parameter(name: str, why: str, notes: list[str], insist: bool) -> None:
    """Record that the adapter leaves parameter ``name`` out (a translation note, "dropped 'name': why"), or,
    when the request ``insist``s on every parameter (``provider.require_parameters``), refuse it with a 400 naming
    it. The caller removes the parameter itself."""
    if insist:
        raise InvalidRequest(
            f"'{name}' would be dropped ({why}), and the request requires every parameter "
            "(provider.require_parameters).",
            param=name,
            code="unsupported_parameter",
        )
    notes.append(f"dropped '{name}': {why}")


def malformed(provider: ProviderConfig, what: str) -> UpstreamError:
    """The error for a provider answer mux cannot read (retryable: the provider's fault, like a 5xx)."""
    return UpstreamError(f"Provider '{provider.name}' answered with {what}.", code="upstream_malformed_response")


def upstream_error(
    provider: ProviderConfig, status: int, body: bytes, headers: Mapping[str, str], *, message: str | None = None
) -> MuxError:
    """Map an upstream failure status (and its body's message, if any) to a ``MuxError``.

    Reads an OpenAI-, Anthropic- or Google-style error body; never lets the provider key into the message.
    ``Retry-After`` is kept for 429 and 503."""
    mapped, code = _STATUS_MAP.get(status, (502 if status >= 500 else 400, f"upstream_{status}"))
    if message is None:
        message = _message_of(body)
    if status in (401, 403):
        text = f"Provider '{provider.name}' rejected the gateway's credentials (HTTP {status}); check its api_key."
    elif status == 402:
        text = (
            f"Provider '{provider.name}' refused the gateway's account (HTTP 402; check its billing): "
            f"{message or 'no detail'}"
        )
    elif message:
        text = f"Provider '{provider.name}' answered HTTP {status}: {message}"
    else:
        text = f"Provider '{provider.name}' answered HTTP {status}."
    text = redact(text, (provider.api_key,))
    extra = []
    retry_after = headers.get("retry-after")
    if retry_after and mapped in (429, 503):
        extra.append(("retry-after", retry_after))
    error = UpstreamError(
        text, code=code, status=mapped, headers=extra, retryable=status in (408, 409, 429) or status >= 500
    )
    error.type = _CLIENT_TYPES.get(mapped, "upstream_error")
    error.upstream_status = status  # type: ignore[attr-defined]
    return error


def _message_of(body: bytes) -> str | None:
    try:
        parsed = _error_body_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    detail = parsed.error
    if isinstance(detail, _ErrorDetail) and detail.message:
        return detail.message[:1000]
    if isinstance(detail, str):
        return detail[:1000]
    return parsed.message[:1000] if parsed.message else None
