"""Anthropic Messages API (``POST {base_url}/v1/messages``, ``x-api-key`` and ``anthropic-version: 2023-06-01``).

Mux speaks OpenAI chat completions to its clients; this module translates both ways. Wire format: the Anthropic
API reference "Messages" and "Streaming Messages", "Errors", the tool-use guides ("Define tools", "Handle tool
calls"), "Extended thinking", "Prompt caching", "Vision" and "PDF support".

Request rules (OpenAI -> Anthropic):

- ``system`` and ``developer`` messages, wherever they stand, become the top-level ``system`` (Anthropic has no
  system role inside ``messages``): one text block per text part (a string content is one part), in their
  order, each text unaltered -- nothing joined, no separator added. A lone part is sent as a plain string;
  parts without visible text are left out (Anthropic refuses whitespace-only text blocks).
- Consecutive turns of one role are merged into one turn (Anthropic merges them too, but a merged turn is
  where ``tool_result`` blocks must come first, so mux builds it itself). ``tool`` messages become
  ``tool_result`` blocks of a user turn, in order, before any user text that follows them. A conversation
  whose first turn is the assistant's is refused (Anthropic requires a user turn first), and so is one
  with no turn left after the system messages.
- Content: text; ``image_url`` with a ``data:`` URL -> base64 image source (jpeg, png, gif, webp), with an
  http(s) URL -> url source; ``file`` with ``file_data`` (a ``data:`` URL or bare base64) -> a ``document``
  block (PDF as base64 source, text/plain as text source). ``file_id``, ``input_audio`` are refused.
- ``max_tokens`` is required upstream: ``max_completion_tokens``, else ``max_tokens``, else the model's
  documented output maximum (``MAX_OUTPUT_TOKENS``, by model family; unknown models get 4096).
- ``temperature``: OpenAI accepts 0-2, Anthropic 0-1 with the same default (1). Values are **clamped** to 1,
  not scaled, so the common 0-1 settings mean what they meant and both defaults agree. ``top_p`` passes;
  ``stop`` (string or list) -> ``stop_sequences``; a ``top_k`` integer in the body is forwarded.
- ``tools`` -> ``{name, description, input_schema}``; ``tool_choice`` none/auto/required/named ->
  ``{"type": "none" | "auto" | "any" | "tool", "name"}``; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use: true``; ``allowed_tools`` narrows the tool list. Custom tools are refused.
- JSON mode (``response_format`` json_object / json_schema): a forced tool whose ``input_schema`` is the schema
  (``{"type": "object"}`` for json_object; a non-object schema is wrapped in ``{"value": ...}``); the tool's
  input comes back as ``message.content`` (a JSON string) with finish_reason ``stop``. With client tools as
  well, ``tool_choice`` becomes ``any`` so the model either calls a client tool or answers in JSON. This is
  the "JSON output" technique of Anthropic's tool-use guide and works on every model with tools.
- ``reasoning`` / ``reasoning_effort`` -> ``thinking: {"type": "enabled", "budget_tokens": N}`` with N from
  ``reasoning.max_tokens`` or the effort (``THINKING_BUDGETS``), at most half of ``max_tokens`` and at least
  1024 (the API minimum; ``max_tokens`` must exceed it). Thinking returns as ``message.reasoning`` /
  ``delta.reasoning`` (omitted with ``reasoning.exclude``). As the API requires, thinking drops
  ``temperature`` and a ``top_p`` below 0.95, and is refused with a forced ``tool_choice`` or JSON mode.
  Limitation: OpenAI messages cannot carry thinking signatures, so an assistant ``reasoning`` field sent back
  is dropped (multi-turn tool use with thinking may be refused upstream).
- The end user (``mlx:end_user`` / ``user`` / ``safety_identifier``) -> ``metadata.user_id``.
- Refused with ``InvalidRequest`` naming the parameter (they cannot be honoured): ``n`` > 1, ``logprobs``,
  a non-empty ``logit_bias``, audio output (``modalities`` with audio, ``audio``).
  Dropped (harmless: hints, OpenAI-side storage or sampling nudges): ``presence_penalty``,
  ``frequency_penalty``, ``seed``, ``store``, ``metadata``, ``service_tier``, ``verbosity``, ``prediction``,
  ``prompt_cache_key``, ``web_search_options`` and any other top-level field with no Anthropic meaning; each
  drop (and a clamped temperature) is a translation note in the decision trace, and becomes a 400 naming the
  parameter when the request sets ``provider.require_parameters: true`` (the rule of the OpenAI-compatible
  presets). Dropped without a note: ``stream_options`` (usage is always accounted) and
  ``tools[].function.strict``.

Response rules: text blocks -> ``content``; ``tool_use`` -> ``tool_calls`` (id kept, ``input`` as a JSON
string); ``thinking`` -> ``reasoning`` (``redacted_thinking`` and server-tool blocks are skipped);
``stop_reason`` end_turn/stop_sequence/pause_turn -> stop, max_tokens/model_context_window_exceeded -> length,
tool_use -> tool_calls, refusal -> content_filter. Usage: ``prompt_tokens`` = input + cache reads + cache
writes, ``prompt_tokens_details.cached_tokens`` = cache reads, ``cache_write_tokens`` = cache writes (priced at
the 5-minute write price), ``completion_tokens`` = output (thinking included, as OpenAI counts reasoning).

Streams: ``message_start`` -> id, model, input usage; the first chunk carrying content carries
``role: "assistant"`` too, so an upstream that fails before any content can still fall over unseen. Each tool
call's first delta has its index (among tool calls), id, type, name and ``arguments: ""``; later deltas carry
argument fragments. ``message_delta`` -> the finish chunk and output usage; ``message_stop`` ends it cleanly;
``error`` events raise like HTTP errors (``overloaded_error`` as 529 -> 503, retryable). Usage is kept on the
translator, never emitted (Dispatch sends the usage chunk).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from time import time
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
from msgspec import Struct

from mux.errors import InvalidRequest, MuxError, UpstreamError, redact
from mux.providers.base import Call, Completion, UpstreamRequest, drop_parameter, malformed, upstream_error
from mux.sse import SSEEvent
from mux.wire.openai import (
    GATEWAY_KEYS,
    AllowedToolsChoice,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    CompletionTokensDetails,
    CustomTool,
    CustomToolChoice,
    Delta,
    DeltaToolCall,
    DeltaToolCallFunction,
    DeveloperMessage,
    FilePart,
    FunctionCall,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    PromptTokensDetails,
    RefusalPart,
    ResponseMessage,
    ResponseToolCall,
    SystemMessage,
    TextPart,
    ToolMessage,
    Usage,
    UserMessage,
    encoder,
)

if TYPE_CHECKING:
    from mux.config.schema import ProviderConfig

API_VERSION = "2023-06-01"

# Documented maximum output tokens by model family (Anthropic "Models overview"); first matching prefix wins.
# Families are matched conservatively: a newer model of a family gets at most its family's known maximum.
MAX_OUTPUT_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 64_000),
    ("claude-opus-4", 32_000),  # claude-opus-4-1, claude-opus-4-0, claude-opus-4-20250514
    ("claude-sonnet-4", 64_000),  # claude-sonnet-4-5, claude-sonnet-4-0
    ("claude-haiku-4", 64_000),  # claude-haiku-4-5
    ("claude-3-7-sonnet", 64_000),
    ("claude-3-5-sonnet", 8_192),
    ("claude-3-5-haiku", 8_192),
    ("claude-3-haiku", 4_096),
    ("claude-3-opus", 4_096),
)
DEFAULT_MAX_OUTPUT_TOKENS = 4_096

# reasoning effort -> thinking budget_tokens (the API minimum is 1024).
THINKING_BUDGETS = {"minimal": 1_024, "low": 2_048, "medium": 8_192, "high": 16_384}
MIN_THINKING_BUDGET = 1_024

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> the HTTP status it comes with (for in-stream ``error`` events).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_JSON_TOOL_FALLBACK = "json_response"
_JSON_TOOL_DESCRIPTION = "Answer with the final response as JSON matching this tool's input schema."


def max_output_tokens(model: str) -> int:
    """Answer the documented output maximum for ``model`` (4096 for an unknown model)."""
    for prefix, limit in MAX_OUTPUT_TOKENS:
        if model.startswith(prefix):
            return limit
    return DEFAULT_MAX_OUTPUT_TOKENS


# --- upstream shapes ---------------------------------------------------------------------------------------


class _Usage(Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: dict[str, Any] | None = None


class _Block(Struct):
    type: str
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw(b"{}")


class _ErrorDetail(Struct):
    type: str | None = None
    message: str | None = None


class _Message(Struct):
    type: str | None = None
    id: str | None = None
    model: str | None = None
    content: list[_Block] = []
    stop_reason: str | None = None
    usage: _Usage | None = None
    error: _ErrorDetail | None = None


class _Delta(Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _Event(Struct):
    type: str | None = None
    message: _Message | None = None
    index: int | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _ErrorDetail | None = None


_message_decoder = msgspec.json.Decoder(_Message)
_event_decoder = msgspec.json.Decoder(_Event)


# --- the adapter -------------------------------------------------------------------------------------------


class AnthropicAdapter:
    """Anthropic's Messages API behind OpenAI chat completions."""

    type_name: ClassVar[str] = "anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    env_keys: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)
    model_prefixes: ClassVar[tuple[str, ...]] = ("claude-",)

    def build_request(self, provider: ProviderConfig, call: Call) -> UpstreamRequest:
        """Answer the ``POST /v1/messages`` request for the client's chat request."""
        notes: list[str] = []
        body = messages_body(call, notes)
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION, **provider.headers}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        return UpstreamRequest("POST", provider.url_for("/v1/messages"), headers, encoder.encode(body), notes)

    def parse_response(self, provider: ProviderConfig, call: Call, body: bytes) -> Completion:
        """Answer the OpenAI chat completion for Anthropic's Message."""
        try:
            message = _message_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise malformed(provider, "a body that is not a Message") from None
        if message.type == "error":
            raise _event_error(provider, message.error, body)
        if message.id is None or message.usage is None:
            raise malformed(provider, "a Message without id or usage")
        json_tool = json_tool_of(call.request)
        text: list[str] = []
        reasoning: list[str] = []
        tool_calls: list[ResponseToolCall] = []
        for block in message.content:
            if block.type == "text" and block.text:
                text.append(block.text)
            elif block.type == "thinking" and block.thinking:
                reasoning.append(block.thinking)
            elif block.type == "tool_use" and block.id is not None and block.name is not None:
                arguments = _raw_text(block.input)
                if json_tool is not None and block.name == json_tool.name:
                    text = [json_tool.unwrap(arguments)]  # the JSON is the whole answer
                    json_tool = None
                else:
                    tool_calls.append(ResponseToolCall(id=block.id, function=FunctionCall(block.name, arguments)))
        finish = finish_reason(message.stop_reason, bool(tool_calls))
        exclude = _reasoning_excluded(call.request)
        reply = ResponseMessage(
            content="".join(text) if text or not tool_calls else None,
            tool_calls=tool_calls or None,
            reasoning="\n\n".join(reasoning) if reasoning and not exclude else None,
        )
        usage = usage_of(message.usage)
        completion = ChatCompletion(
            id=_completion_id(message.id),
            created=int(time()),
            model=message.model or call.model,
            choices=[Choice(index=0, message=reply, finish_reason=finish)],
            usage=usage,
        )
        return Completion(
            body=encoder.encode(completion),
            usage=usage,
            model=completion.model,
            response_id=completion.id,
            finish_reason=finish,
        )

    def parse_error(self, provider: ProviderConfig, status: int, body: bytes, headers: Mapping[str, str]) -> MuxError:
        """Map an Anthropic error answer; ``{"type": "error", "error": {"type", "message"}}`` is read by
        ``upstream_error``. 529 (overloaded) becomes a retryable 503."""
        return upstream_error(provider, status, body, headers)

    def stream_translator(self, provider: ProviderConfig, call: Call) -> AnthropicStream:
        return AnthropicStream(provider, call)


ADAPTER = AnthropicAdapter()


# --- request translation -----------------------------------------------------------------------------------


class JsonTool(Struct, frozen=True):
    """The forced tool that carries JSON mode: its name, schema, and whether the schema was wrapped."""

    name: str
    schema: dict[str, Any]
    description: str
    wrapped: bool = False

    def unwrap(self, arguments: str) -> str:
        """Answer the JSON text the client asked for, from the tool's input JSON."""
        if not self.wrapped:
            return arguments
        try:
            value = msgspec.json.decode(arguments)
        except msgspec.DecodeError:
            return arguments
        if isinstance(value, dict) and "value" in value:
            return encoder.encode(value["value"]).decode()
        return arguments


def json_tool_of(request: ChatRequest) -> JsonTool | None:
    """Answer the JSON-mode tool for ``request``, or None when it asks for no JSON."""
    fmt = request.response_format
    taken = {t.function.name for t in request.tools or () if not isinstance(t, CustomTool)}
    if isinstance(fmt, JsonObjectFormat):
        name = _JSON_TOOL_FALLBACK
        schema: dict[str, Any] = {"type": "object"}
        description = _JSON_TOOL_DESCRIPTION
    elif isinstance(fmt, JsonSchemaFormat):
        spec = fmt.json_schema
        name = spec.name if spec.name not in taken else _JSON_TOOL_FALLBACK
        schema = spec.schema if spec.schema is not None else {"type": "object"}
        description = spec.description or _JSON_TOOL_DESCRIPTION
    else:
        return None
    while name in taken:
        name = "_" + name
    if schema.get("type") != "object":
        return JsonTool(
            name, {"type": "object", "properties": {"value": schema}, "required": ["value"]}, description, wrapped=True
        )
    return JsonTool(name, schema, description)


# Top-level fields this module translates (or checks); any other non-null one is dropped with a note.
_TRANSLATED = (
    frozenset(
        {
            "model",
            "messages",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "stream",
            "stream_options",
            "n",
            "temperature",
            "top_p",
            "top_k",
            "max_tokens",
            "max_completion_tokens",
            "stop",
            "user",
            "safety_identifier",
            "reasoning",
            "reasoning_effort",
            "logprobs",
            "logit_bias",
            "modalities",
            "audio",
        }
    )
    | GATEWAY_KEYS
)


def messages_body(call: Call, notes: list[str] | None = None) -> dict[str, Any]:
    """Answer the Anthropic Messages request body for ``call`` (raises ``InvalidRequest``); translation
    decisions worth knowing (dropped or clamped parameters) are appended to ``notes``."""
    request = call.request
    notes = [] if notes is None else notes
    insist = call.insists
    _refuse_unsupported(request)
    for name, raw in call.fields.items():
        if name not in _TRANSLATED and bytes(raw) != b"null":
            drop_parameter(name, "it has no Anthropic equivalent", notes, insist)
    system, turns = _turns(request.messages)
    body: dict[str, Any] = {"model": call.model}
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    body["messages"] = turns

    limit = request.max_completion_tokens or request.max_tokens
    max_tokens = limit or max_output_tokens(call.model)
    body["max_tokens"] = max_tokens

    thinking = _thinking_budget(request, max_tokens, explicit=limit is not None)
    if thinking is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": thinking}

    if request.temperature is not None:
        if thinking is not None:
            drop_parameter("temperature", "Anthropic allows no temperature with reasoning", notes, insist)
        elif request.temperature > 1:
            notes.append(f"clamped 'temperature' {request.temperature:g} to 1: Anthropic's range is 0-1")
            body["temperature"] = 1.0
        else:
            body["temperature"] = request.temperature
    if request.top_p is not None:
        if thinking is None or request.top_p >= 0.95:
            body["top_p"] = request.top_p
        else:
            drop_parameter("top_p", "Anthropic allows top_p below 0.95 only without reasoning", notes, insist)
    top_k = call.fields.get("top_k")
    if top_k is not None and bytes(top_k) != b"null":
        value = msgspec.json.decode(top_k)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest("'top_k' must be a positive integer.", param="top_k", code="invalid_value")
        if thinking is None:
            body["top_k"] = value
        else:
            drop_parameter("top_k", "Anthropic allows no top_k with reasoning", notes, insist)
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)

    tools, tool_choice = _tools(request, thinking is not None)
    if tools:
        body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice

    user_id = call.end_user or request.user or request.safety_identifier
    if user_id:
        body["metadata"] = {"user_id": user_id[:256]}
    if request.stream:
        body["stream"] = True
    return body


def _refuse_unsupported(request: ChatRequest) -> None:
    if request.n is not None and request.n > 1:
        raise InvalidRequest(
            "Anthropic models return one choice per request; 'n' greater than 1 is not supported.",
            param="n",
            code="unsupported_parameter",
        )
    if request.logprobs:
        raise InvalidRequest(
            "Anthropic models do not return log probabilities; 'logprobs' is not supported.",
            param="logprobs",
            code="unsupported_parameter",
        )
    if request.logit_bias:
        raise InvalidRequest(
            "Anthropic models do not accept token biases; 'logit_bias' is not supported.",
            param="logit_bias",
            code="unsupported_parameter",
        )
    if request.audio is not None or (request.modalities and "audio" in request.modalities):
        param = "audio" if request.audio is not None else "modalities"
        raise InvalidRequest("Anthropic models do not produce audio.", param=param, code="unsupported_parameter")


def _thinking_budget(request: ChatRequest, max_tokens: int, *, explicit: bool) -> int | None:
    reasoning = request.reasoning
    effort = request.reasoning_effort
    budget: int | None = None
    if reasoning is not None:
        if reasoning.enabled is False or reasoning.effort == "none":
            return None
        if reasoning.max_tokens is not None:
            budget = max(reasoning.max_tokens, MIN_THINKING_BUDGET)
            if budget >= max_tokens:
                raise InvalidRequest(
                    f"reasoning.max_tokens ({budget}) must be less than max_tokens ({max_tokens}): "
                    "Anthropic counts thinking within max_tokens.",
                    param="reasoning.max_tokens",
                )
            return budget
        effort = reasoning.effort or effort or "medium"
    if effort is None or effort == "none":
        return None
    budget = max(min(THINKING_BUDGETS[effort], max_tokens // 2), MIN_THINKING_BUDGET)
    if budget >= max_tokens:
        param = "max_completion_tokens" if explicit else "reasoning_effort"
        raise InvalidRequest(
            f"Reasoning on Anthropic needs max_tokens above {MIN_THINKING_BUDGET} (the minimum thinking budget); "
            f"got {max_tokens}.",
            param=param,
        )
    return budget


def _reasoning_excluded(request: ChatRequest) -> bool:
    return bool(request.reasoning and request.reasoning.exclude)


def _tools(request: ChatRequest, thinking: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(request.tools or ()):
        if isinstance(tool, CustomTool):
            raise InvalidRequest(
                "Anthropic supports function tools only; custom tools are not supported.",
                param=f"tools[{i}]",
                code="unsupported_parameter",
            )
        fn = tool.function
        entry: dict[str, Any] = {"name": fn.name}
        if fn.description:
            entry["description"] = fn.description
        entry["input_schema"] = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        tools.append(entry)

    choice = request.tool_choice
    if isinstance(choice, CustomToolChoice):
        raise InvalidRequest(
            "Anthropic supports function tools only; a custom tool_choice is not supported.",
            param="tool_choice",
            code="unsupported_parameter",
        )
    if isinstance(choice, AllowedToolsChoice):
        allowed = {
            t.get("function", {}).get("name") if isinstance(t, dict) else None
            for t in choice.allowed_tools.get("tools", ())
        }
        tools = [t for t in tools if t["name"] in allowed]
        choice = "required" if choice.allowed_tools.get("mode") == "required" else "auto"

    json_tool = json_tool_of(request)
    if thinking and (choice == "required" or isinstance(choice, NamedToolChoice)):
        raise InvalidRequest(
            "Anthropic does not allow reasoning with a forced tool_choice; use 'auto' or 'none'.", param="tool_choice"
        )
    if thinking and json_tool is not None:
        raise InvalidRequest(
            "Anthropic JSON mode is a forced tool call, which cannot be combined with reasoning.",
            param="response_format",
        )

    result: dict[str, Any] | None
    if json_tool is not None:
        client_tools = bool(tools)
        tools.append({"name": json_tool.name, "description": json_tool.description, "input_schema": json_tool.schema})
        if isinstance(choice, NamedToolChoice):
            result = {"type": "tool", "name": choice.function.name}
        elif client_tools and choice != "none":
            result = {"type": "any"}
        else:
            result = {"type": "tool", "name": json_tool.name}
    elif not tools:
        return tools, None
    elif choice is None or choice == "auto":
        result = {"type": "auto"} if choice is not None or request.parallel_tool_calls is False else None
    elif choice == "none":
        return tools, {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    else:
        assert isinstance(choice, NamedToolChoice)
        result = {"type": "tool", "name": choice.function.name}
    if result is not None and request.parallel_tool_calls is False:
        result["disable_parallel_tool_use"] = True
    return tools, result


def _turns(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Answer the system text blocks and the alternating user/assistant turns for OpenAI ``messages``."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(message, (SystemMessage, DeveloperMessage)):
            parts = [message.content] if isinstance(message.content, str) else [p.text for p in message.content]
            system.extend({"type": "text", "text": text} for text in parts if text.strip())
        elif isinstance(message, UserMessage):
            add("user", _user_blocks(message.content, where))
        elif isinstance(message, AssistantMessage):
            add("assistant", _assistant_blocks(message, where))
        elif isinstance(message, ToolMessage):
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            text = _text_of(message.content)
            if text:
                result["content"] = text
            add("user", [result])
    if not turns:
        raise InvalidRequest(
            "The conversation has no user message; Anthropic needs at least one.",
            param="messages",
            code="invalid_value",
        )
    if turns[0]["role"] != "user":
        raise InvalidRequest(
            "Anthropic requires the conversation to start with a user message (after any system messages).",
            param="messages",
            code="invalid_value",
        )
    last = turns[-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        # a final assistant turn is a prefill, which may not end in whitespace
        stripped = last["content"][-1]["text"].rstrip()
        if stripped:
            last["content"][-1]["text"] = stripped
        else:
            last["content"].pop()
            if not last["content"]:
                turns.pop()
    for turn in turns:  # one plain text block reads best as a string
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return system, turns


def _text_of(content: str | list[TextPart]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if part.text)


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):  # Anthropic refuses empty and whitespace-only text blocks: they are left out
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, TextPart):
            if part.text.strip():
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part.image_url.url, f"{at}.image_url.url"))
        elif isinstance(part, FilePart):
            blocks.append(_document_block(part.file.file_data, part.file.file_id, part.file.filename, f"{at}.file"))
        else:
            raise InvalidRequest("Anthropic models do not accept audio input.", param=at, code="unsupported_parameter")
    return blocks


def _assistant_blocks(message: AssistantMessage, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.content
    if isinstance(content, str):
        if content.strip():
            blocks.append({"type": "text", "text": content})
    elif content:
        for part in content:
            text = part.refusal if isinstance(part, RefusalPart) else part.text
            if text.strip():
                blocks.append({"type": "text", "text": text})
    for j, tool_call in enumerate(message.tool_calls or ()):
        arguments = tool_call.function.arguments
        try:
            value = msgspec.json.decode(arguments) if arguments.strip() else {}
        except msgspec.DecodeError:
            value = None
        if not isinstance(value, dict):
            raise InvalidRequest(
                "Tool call arguments must be a JSON object for Anthropic.",
                param=f"{where}.tool_calls[{j}].function.arguments",
                code="invalid_value",
            )
        blocks.append({"type": "tool_use", "id": tool_call.id, "name": tool_call.function.name, "input": value})
    return blocks


def _data_url(url: str) -> tuple[str, str] | None:
    """Answer ``(media_type, base64 data)`` of a base64 ``data:`` URL, or None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, comma, data = url.partition(",")
    if not comma or not header.endswith(";base64"):
        return ("", "")
    return header[5:].split(";", 1)[0].strip().lower(), data


def _image_block(url: str, param: str) -> dict[str, Any]:
    parsed = _data_url(url)
    if parsed is None:
        if url.startswith(("http://", "https://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise InvalidRequest(
            "An image must be an http(s) URL or a base64 data: URL.", param=param, code="invalid_value"
        )
    media_type, data = parsed
    if media_type == "image/jpg":
        media_type = "image/jpeg"
    if media_type not in IMAGE_MEDIA_TYPES:
        raise InvalidRequest(
            f"Anthropic accepts base64 images of type {', '.join(sorted(IMAGE_MEDIA_TYPES))}; "
            f"got '{media_type or 'not base64'}'.",
            param=param,
            code="invalid_value",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document_block(file_data: str | None, file_id: str | None, filename: str | None, param: str) -> dict[str, Any]:
    if file_data is None:
        what = "file_id references (OpenAI Files)" if file_id else "a file without file_data"
        raise InvalidRequest(
            f"Anthropic cannot read {what}; send the file inline as file_data.",
            param=f"{param}.file_id" if file_id else param,
            code="unsupported_parameter",
        )
    parsed = _data_url(file_data)
    media_type, data = parsed if parsed is not None else ("application/pdf", file_data)
    if media_type == "application/pdf":
        source: dict[str, Any] = {"type": "base64", "media_type": "application/pdf", "data": data}
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidRequest(
                "The text file is not valid base64 UTF-8.", param=f"{param}.file_data", code="invalid_value"
            ) from None
        source = {"type": "text", "media_type": "text/plain", "data": text}
    else:
        raise InvalidRequest(
            f"Anthropic accepts PDF and plain-text documents; got '{media_type or 'not base64'}'.",
            param=f"{param}.file_data",
            code="invalid_value",
        )
    block: dict[str, Any] = {"type": "document", "source": source}
    if filename:
        block["title"] = filename
    return block


# --- response translation ----------------------------------------------------------------------------------


def finish_reason(stop_reason: str | None, tool_calls: bool) -> str:
    """Answer OpenAI's finish_reason for Anthropic's ``stop_reason`` (a JSON-mode tool call ends in stop)."""
    reason = FINISH_REASONS.get(stop_reason or "end_turn", "stop")
    if reason == "tool_calls" and not tool_calls:
        return "stop"
    return reason


def usage_of(usage: _Usage | None) -> Usage:
    """Answer OpenAI usage for Anthropic usage: the prompt counts cache reads and cache writes too."""
    if usage is None:
        return Usage()
    fresh = usage.input_tokens or 0
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    output = usage.output_tokens or 0
    prompt = fresh + read + written
    completion_details = None
    thinking = (usage.output_tokens_details or {}).get("thinking_tokens")
    if isinstance(thinking, int) and thinking > 0:
        completion_details = CompletionTokensDetails(reasoning_tokens=thinking)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=output,
        total_tokens=prompt + output,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=read, cache_write_tokens=written),
        completion_tokens_details=completion_details,
    )


def _raw_text(raw: msgspec.Raw) -> str:
    text = bytes(raw).decode()
    return text if text.strip() and text != "null" else "{}"


def _completion_id(message_id: str | None) -> str:
    return f"chatcmpl-{message_id or 'anthropic'}"


def _event_error(provider: ProviderConfig, detail: _ErrorDetail | None, body: bytes) -> MuxError:
    """Map an Anthropic ``error`` object (an in-stream event or a 200 error body) like its HTTP status."""
    kind = detail.type if detail is not None and detail.type else "api_error"
    status = ERROR_STATUS.get(kind, 500)
    error = ADAPTER.parse_error(provider, status, body, {})
    text = detail.message if detail is not None and detail.message else "no details"
    error.message = redact(f"Provider '{provider.name}' reported {kind}: {text[:1000]}", (provider.api_key,))
    return error


# --- streams -----------------------------------------------------------------------------------------------


class _BlockState(Struct):
    """What a stream remembers of one open content block."""

    kind: str  # "text" | "thinking" | "tool" (a client tool call) | "json" (the JSON-mode tool)
    tool_index: int | None = None  # the OpenAI tool_calls index of a "tool" block
    emitted: bool = False  # whether any input fragment went out
    buffered: list[str] = []  # input fragments held back (a wrapped JSON-mode schema)


class AnthropicStream:
    """Anthropic stream events in, OpenAI chunk payloads out; knows whether ``message_stop`` arrived."""

    __slots__ = (
        "provider",
        "json_tool",
        "exclude_reasoning",
        "usage",
        "model",
        "id",
        "created",
        "done",
        "_role_sent",
        "_blocks",
        "_tool_count",
        "_has_tool_calls",
        "_finished",
    )

    def __init__(self, provider: ProviderConfig, call: Call) -> None:
        self.provider = provider
        self.json_tool = json_tool_of(call.request)
        self.exclude_reasoning = _reasoning_excluded(call.request)
        self.usage: Usage | None = None
        self.model: str | None = call.model
        self.id: str | None = None
        self.created: int | None = int(time())
        self.done = False
        self._role_sent = False
        self._blocks: dict[int, _BlockState] = {}  # by Anthropic content block index
        self._tool_count = 0
        self._has_tool_calls = False
        self._finished = False

    def feed(self, event: SSEEvent) -> list[bytes]:
        """Answer the chunk payloads for one upstream event."""
        if self.done:
            return []
        try:
            data = _event_decoder.decode(event.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            if event.event == "ping":
                return []
            raise malformed(self.provider, "a stream event that is not JSON") from None
        kind = data.type or event.event
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._start(data)
        if kind == "content_block_stop":
            return self._stop(data)
        if kind == "message_start":
            message = data.message
            if message is not None:
                self.id = _completion_id(message.id)
                self.model = message.model or self.model
                if message.usage is not None:
                    self.usage = usage_of(message.usage)
            return []
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            raise _event_error(self.provider, data.error, event.data)
        return []  # ping, and event types added later (the API's versioning policy allows new ones)

    def close(self) -> list[bytes]:
        """The upstream closed: fine after ``message_stop``, a cut before it."""
        if not self.done:
            raise UpstreamError(
                f"Provider '{self.provider.name}' ended the stream before it was complete.", code="upstream_stream_cut"
            )
        return []

    # --- events ------------------------------------------------------------------------------------------

    def _start(self, data: _Event) -> list[bytes]:
        block = data.content_block
        if block is None or data.index is None:
            return []
        if block.type == "tool_use" and block.id is not None and block.name is not None:
            if self.json_tool is not None and block.name == self.json_tool.name:
                self._blocks[data.index] = _BlockState("json")
                return []
            index = self._tool_count
            self._tool_count += 1
            self._has_tool_calls = True
            self._blocks[data.index] = _BlockState("tool", index)
            call = DeltaToolCall(
                index=index, id=block.id, type="function", function=DeltaToolCallFunction(name=block.name, arguments="")
            )
            return [self._chunk(Delta(tool_calls=[call]))]
        if block.type == "text":
            self._blocks[data.index] = _BlockState("text")
            return [self._chunk(Delta(content=block.text))] if block.text else []
        if block.type == "thinking":
            self._blocks[data.index] = _BlockState("thinking")
            if block.thinking and not self.exclude_reasoning:
                return [self._chunk(Delta(reasoning=block.thinking))]
        return []

    def _delta(self, data: _Event) -> list[bytes]:
        delta = data.delta
        if delta is None:
            return []
        if delta.type == "text_delta":
            return [self._chunk(Delta(content=delta.text))] if delta.text else []
        if delta.type == "thinking_delta":
            if delta.thinking and not self.exclude_reasoning:
                return [self._chunk(Delta(reasoning=delta.thinking))]
            return []
        if delta.type == "input_json_delta" and delta.partial_json:
            state = self._blocks.get(data.index) if data.index is not None else None
            if state is None:
                return []
            if state.kind == "tool":
                state.emitted = True
                fragment = DeltaToolCallFunction(arguments=delta.partial_json)
                call = DeltaToolCall(index=state.tool_index or 0, function=fragment)
                return [self._chunk(Delta(tool_calls=[call]))]
            if state.kind == "json":
                assert self.json_tool is not None
                if self.json_tool.wrapped:
                    state.buffered.append(delta.partial_json)
                    return []
                state.emitted = True
                return [self._chunk(Delta(content=delta.partial_json))]
        return []  # signature_delta, citations_delta, empty fragments

    def _stop(self, data: _Event) -> list[bytes]:
        state = self._blocks.get(data.index) if data.index is not None else None
        if state is None:
            return []
        if state.kind == "tool" and not state.emitted:  # a call without arguments: its input is {}
            call = DeltaToolCall(index=state.tool_index or 0, function=DeltaToolCallFunction(arguments="{}"))
            return [self._chunk(Delta(tool_calls=[call]))]
        if state.kind == "json":
            assert self.json_tool is not None
            if self.json_tool.wrapped:
                return [self._chunk(Delta(content=self.json_tool.unwrap("".join(state.buffered) or "{}")))]
            if not state.emitted:
                return [self._chunk(Delta(content="{}"))]
        return []

    def _message_delta(self, data: _Event) -> list[bytes]:
        if data.usage is not None:
            current = data.usage
            previous = self.usage
            merged = _Usage(
                input_tokens=current.input_tokens,
                output_tokens=current.output_tokens,
                cache_creation_input_tokens=current.cache_creation_input_tokens,
                cache_read_input_tokens=current.cache_read_input_tokens,
                output_tokens_details=current.output_tokens_details,
            )
            if previous is not None:  # message_delta counts are cumulative; absent ones keep message_start's
                details = previous.prompt_tokens_details
                if merged.input_tokens is None:
                    merged.input_tokens = previous.prompt_tokens - previous.cached_tokens - previous.cache_write_tokens
                if merged.cache_read_input_tokens is None and details is not None:
                    merged.cache_read_input_tokens = details.cached_tokens
                if merged.cache_creation_input_tokens is None and details is not None:
                    merged.cache_creation_input_tokens = details.cache_write_tokens
                if merged.output_tokens is None:
                    merged.output_tokens = previous.completion_tokens
            self.usage = usage_of(merged)
        stop_reason = data.delta.stop_reason if data.delta is not None else None
        if stop_reason is None or self._finished:
            return []
        self._finished = True
        return [self._chunk(Delta(), finish_reason(stop_reason, self._has_tool_calls))]

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta.role = "assistant"
            if delta.content is None and delta.tool_calls is None and delta.reasoning is None:
                delta.content = ""
        chunk = ChatCompletionChunk(
            id=self.id or _completion_id(None),
            created=self.created or int(time()),
            model=self.model or "",
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
        )
        return encoder.encode(chunk)
