"""OpenAI chat-completions wire models: the validated request view, the response, chunk and usage shapes.

The request view validates what mux and the providers read; it is never what gets forwarded to an
OpenAI-compatible upstream (see ``forwardable_fields``), so unknown new parameters survive untouched.
Decoders and encoders are built once, at import. Every Struct here is a tree of decoded JSON or of values
mux builds, never part of a reference cycle, so all are ``gc=False``: the garbage collector need not track
the many small objects of each request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct, field

from mux.errors import InvalidRequest, from_validation

Temperature = Annotated[float, Meta(ge=0, le=2)]
UnitInterval = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, Meta(ge=1)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]
ChoiceCount = Annotated[int, Meta(ge=1, le=128)]
SessionId = Annotated[str, Meta(max_length=128)]
Seed = Annotated[int, Meta(ge=-9007199254740991, le=9007199254740991)]
TagText = Annotated[str, Meta(max_length=256)]


# --- content parts -------------------------------------------------------------------------------------


class TextPart(Struct, gc=False, tag="text", tag_field="type"):
    text: str


class ImageUrl(Struct, gc=False):
    url: Annotated[str, Meta(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Struct, gc=False, tag="image_url", tag_field="type"):
    image_url: ImageUrl


class InputAudio(Struct, gc=False):
    data: str
    format: str


class AudioPart(Struct, gc=False, tag="input_audio", tag_field="type"):
    input_audio: InputAudio


class FileRef(Struct, gc=False):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(Struct, gc=False, tag="file", tag_field="type"):
    file: FileRef


class RefusalPart(Struct, gc=False, tag="refusal", tag_field="type"):
    refusal: str


UserPart = Union[TextPart, ImagePart, AudioPart, FilePart]
AssistantPart = Union[TextPart, RefusalPart]


# --- messages --------------------------------------------------------------------------------------------


class FunctionCall(Struct, gc=False):
    name: str
    arguments: str


class ToolCall(Struct, gc=False):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(Struct, gc=False, tag="system", tag_field="role"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(Struct, gc=False, tag="developer", tag_field="role"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Struct, gc=False, tag="user", tag_field="role"):
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(Struct, gc=False, tag="assistant", tag_field="role"):
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    reasoning: str | None = None


class ToolMessage(Struct, gc=False, tag="tool", tag_field="role"):
    content: str | list[TextPart]
    tool_call_id: str


Message = Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage]


# --- tools and formats -------------------------------------------------------------------------------------


class FunctionDef(Struct, gc=False):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Struct, gc=False, tag="function", tag_field="type"):
    function: FunctionDef


class CustomTool(Struct, gc=False, tag="custom", tag_field="type"):
    custom: dict[str, Any]


Tool = Union[FunctionTool, CustomTool]


class NamedFunction(Struct, gc=False):
    name: str


class NamedToolChoice(Struct, gc=False, tag="function", tag_field="type"):
    function: NamedFunction


class AllowedToolsChoice(Struct, gc=False, tag="allowed_tools", tag_field="type"):
    allowed_tools: dict[str, Any]


class CustomToolChoice(Struct, gc=False, tag="custom", tag_field="type"):
    custom: dict[str, Any]


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice, AllowedToolsChoice, CustomToolChoice]


class TextFormat(Struct, gc=False, tag="text", tag_field="type"):
    pass


class JsonObjectFormat(Struct, gc=False, tag="json_object", tag_field="type"):
    pass


class JsonSchemaSpec(Struct, gc=False):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class JsonSchemaFormat(Struct, gc=False, tag="json_schema", tag_field="type"):
    json_schema: JsonSchemaSpec


ResponseFormat = Union[TextFormat, JsonObjectFormat, JsonSchemaFormat]


class StreamOptions(Struct, gc=False):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class Reasoning(Struct, gc=False):
    effort: Literal["minimal", "low", "medium", "high", "none"] | None = None
    max_tokens: PositiveInt | None = None
    exclude: bool | None = None
    enabled: bool | None = None


class Prediction(Struct, gc=False):
    type: Literal["content"]
    content: str | list[TextPart]


# --- gateway extensions ------------------------------------------------------------------------------------


class CacheControl(Struct, gc=False, forbid_unknown_fields=True):
    """``mlx:cache``: per-request cache controls."""

    skip: bool = False
    ttl_s: Annotated[int, Meta(ge=0)] | None = None


class ProviderPreferences(Struct, gc=False):
    """OpenRouter-style ``provider`` routing preferences (read by the router)."""

    order: list[str] | None = None
    only: list[str] | None = None
    ignore: list[str] | None = None
    allow_fallbacks: bool | None = None
    sort: Literal["price", "latency", "throughput"] | None = None
    max_price: dict[str, float] | None = None
    require_parameters: bool | None = None
    data_collection: str | None = None


class RoutingDirective(Struct, gc=False):
    """The per-request ``routing`` directive: ``{prefer, allow_fallbacks, max_provider_tries}``."""

    prefer: list[str] | None = None
    allow_fallbacks: bool | None = None
    max_provider_tries: PositiveInt | None = None


# --- the request view --------------------------------------------------------------------------------------


class ChatRequest(Struct, gc=False, kw_only=True):
    """The validated view of a ``POST /v1/chat/completions`` body."""

    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    messages: Annotated[list[Message], Meta(min_length=1)]
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: ChoiceCount | None = None
    temperature: Temperature | None = None
    top_p: UnitInterval | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    seed: Seed | None = None
    user: str | None = None
    metadata: dict[str, Annotated[str, Meta(max_length=512)]] | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high", "none"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    service_tier: str | None = None
    store: bool | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prediction: Prediction | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    session_id: SessionId | None = None
    # gateway fields: read by layers, never forwarded upstream
    mlx_tags: dict[Annotated[str, Meta(min_length=1, max_length=64)], TagText] | None = field(
        default=None, name="mlx:tags"
    )
    mlx_end_user: Annotated[str, Meta(min_length=1, max_length=256)] | None = field(default=None, name="mlx:end_user")
    mlx_cache: CacheControl | None = field(default=None, name="mlx:cache")
    mlx_trace: bool | None = field(default=None, name="mlx:trace")
    models: Annotated[list[str], Meta(min_length=1)] | None = None
    fallbacks: list[str] | None = None
    provider: ProviderPreferences | None = None
    route: Literal["fallback", "sort"] | None = None
    routing: RoutingDirective | None = None


# Keys that mux reads and never forwards upstream.
GATEWAY_KEYS = frozenset(
    {
        "mlx:tags",
        "mlx:end_user",
        "mlx:cache",
        "mlx:trace",
        "models",
        "fallbacks",
        "provider",
        "route",
        "routing",
        "session_id",
        "lmchat",
        "plugins",
        "debug",
    }
)
# Keys that would redirect traffic or carry credentials: refused, never honoured.
FORBIDDEN_KEYS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "extra_headers",
        "headers",
        "organization",
        "custom_llm_provider",
        "aws_access_key_id",
        "aws_secret_access_key",
        "vertex_credentials",
        "azure_ad_token",
    }
)

_request_decoder = msgspec.json.Decoder(ChatRequest)
_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _decode_body(body: bytes, decoder: msgspec.json.Decoder) -> tuple[Any, dict[str, msgspec.Raw]]:
    """Decode a request body into ``decoder``'s view and its raw top-level fields; refuse non-objects,
    malformed JSON, bad UTF-8, absurd nesting and keys that would redirect traffic or carry credentials."""
    try:
        fields = _fields_decoder.decode(body)
    except msgspec.ValidationError:
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json") from None
    except msgspec.DecodeError as exc:
        raise from_validation(exc) from None
    except RecursionError:
        raise _too_deep() from None
    except UnicodeDecodeError:
        raise _not_utf8() from None
    for key in fields:
        if key in FORBIDDEN_KEYS or key.startswith("mlx:") and key not in GATEWAY_KEYS:
            raise InvalidRequest(
                f"Unsupported parameter: '{key}' is not accepted in a request body; "
                "upstream endpoints and credentials are set in the gateway's configuration.",
                param=key,
                code="unsupported_parameter",
            )
    try:
        view = decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_validation(exc) from None
    except RecursionError:
        raise _too_deep() from None
    except UnicodeDecodeError:
        raise _not_utf8() from None
    return view, fields


def decode_request(body: bytes) -> tuple[ChatRequest, dict[str, msgspec.Raw]]:
    """Validate a chat request body; answer its view and its top-level fields as raw JSON.

    Raises ``InvalidRequest`` naming the parameter for malformed JSON, wrong types or out-of-range values."""
    view, fields = _decode_body(body, _request_decoder)
    if view.model is None and not view.models:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if view.top_logprobs is not None and not view.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    if view.stream_options is not None and not view.stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    return view, fields


def _too_deep() -> InvalidRequest:
    return InvalidRequest("Request body is not valid JSON: nested too deeply.", code="invalid_json")


def _not_utf8() -> InvalidRequest:
    return InvalidRequest("Request body is not valid JSON: it is not valid UTF-8.", code="invalid_json")


def forwardable_fields(fields: dict[str, msgspec.Raw]) -> dict[str, msgspec.Raw]:
    """Answer the body's fields without the gateway's own keys, for an OpenAI-compatible upstream."""
    return {k: v for k, v in fields.items() if k not in GATEWAY_KEYS}


# --- embeddings --------------------------------------------------------------------------------------------


class EmbeddingsRequest(Struct, gc=False, kw_only=True):
    """The validated view of a ``POST /v1/embeddings`` body."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    # a string, or a list of strings, of token ids, or of token-id lists (homogeneity checked on decode)
    input: (
        Annotated[str, Meta(min_length=1)] | Annotated[list[str | int | list[int]], Meta(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None
    user: str | None = None


_embeddings_decoder = msgspec.json.Decoder(EmbeddingsRequest)


def decode_embeddings(body: bytes) -> tuple[EmbeddingsRequest, dict[str, msgspec.Raw]]:
    """Validate an embeddings body; answer its view and raw top-level fields. Raises ``InvalidRequest``."""
    view, fields = _decode_body(body, _embeddings_decoder)
    if isinstance(view.input, list) and any(item == "" or item == [] for item in view.input):
        raise InvalidRequest(
            "'input' must not contain empty strings or empty token lists.", param="input", code="invalid_value"
        )
    if isinstance(view.input, list) and len({type(item) for item in view.input}) > 1:
        raise InvalidRequest(
            "'input' must be a string or a list of strings, of token ids, or of token-id lists, not a mixture.",
            param="input",
            code="invalid_value",
        )
    return view, fields


# --- responses ---------------------------------------------------------------------------------------------


class PromptTokensDetails(Struct, gc=False, omit_defaults=True):
    cached_tokens: int | None = None  # None, not 0, by default: an upstream's explicit 0 must survive re-encoding
    audio_tokens: int | None = None
    cache_write_tokens: int | None = None


class CompletionTokensDetails(Struct, gc=False, omit_defaults=True):
    reasoning_tokens: int | None = None  # as cached_tokens
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(
    Struct, gc=False
):  # no omit_defaults: a count of 0 must stay on the wire (absent details and cost are null)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    cost: float | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details else 0

    @property
    def cache_write_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cache_write_tokens or 0) if details else 0

    @property
    def reasoning_tokens(self) -> int:
        details = self.completion_tokens_details
        return (details.reasoning_tokens or 0) if details else 0


class ResponseToolCall(
    Struct, gc=False
):  # no omit_defaults: "type": "function" must be on the wire (it is the default)
    id: str
    function: FunctionCall
    type: str = "function"


class ResponseMessage(
    Struct, gc=False
):  # no omit_defaults: "role": "assistant" must be on the wire (it is the default)
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None
    refusal: str | None = None
    reasoning: str | None = None


class Choice(Struct, gc=False):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: Any = None


class ChatCompletion(Struct, gc=False, omit_defaults=True, tag="chat.completion", tag_field="object"):
    # "object": "chat.completion" is the tag, so it is always on the wire (omit_defaults would drop a default)
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class DeltaToolCallFunction(Struct, gc=False, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Struct, gc=False, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: DeltaToolCallFunction | None = None


class Delta(Struct, gc=False, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    refusal: str | None = None
    reasoning: str | None = None


class ChunkChoice(Struct, gc=False):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(Struct, gc=False):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: Usage | None = None


class ChoicePeek(Struct, gc=False):
    """What mux reads of one choice of a completion or chunk."""

    finish_reason: str | None = None


class CompletionPeek(Struct, gc=False):
    """What mux reads of an OpenAI-shaped completion or chunk it relays without re-encoding."""

    id: str | None = None
    created: int | None = None
    model: str | None = None
    usage: Usage | None = None
    choices: list[ChoicePeek] | None = None
    error: dict[str, Any] | None = None

    def finish_reason(self) -> str | None:
        """The first ``finish_reason`` set among the choices."""
        return next((c.finish_reason for c in self.choices if c.finish_reason), None) if self.choices else None


class EmbeddingsPeek(Struct, gc=False):
    """What mux reads of an OpenAI embedding list it relays unchanged."""

    data: list[msgspec.Raw]
    model: str | None = None
    usage: Usage | None = None


peek_decoder = msgspec.json.Decoder(CompletionPeek)
embeddings_peek_decoder = msgspec.json.Decoder(EmbeddingsPeek)
_top_level_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def usage_chunk(id: str, created: int, model: str, usage: Usage) -> bytes:
    """Answer the final stream chunk that carries ``usage``: no choices, as OpenAI sends it."""
    return encoder.encode(ChatCompletionChunk(id=id, created=created, model=model, choices=[], usage=usage))


def trace_chunk(id: str, created: int, model: str, trace: dict[str, Any]) -> bytes:
    """Answer the stream chunk that carries the decision trace (``mlx:trace``), with no choices."""
    return encoder.encode(
        {
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "mlx:trace": trace,
        }
    )


def with_fields(body: bytes, replace: dict[str, Any]) -> bytes:
    """Answer a completion body with some top-level fields replaced or added (e.g. ``usage`` with its
    ``cost``); every other field is kept byte for byte."""
    fields = _top_level_decoder.decode(body)
    for key, value in replace.items():
        fields[key] = msgspec.Raw(encoder.encode(value))
    return encoder.encode(fields)


encoder = msgspec.json.Encoder()
