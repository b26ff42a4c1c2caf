"""Google Gemini, the Gemini Developer API of AI Studio (``type: gemini``).

``POST {base_url}/v1beta/models/{model}:generateContent``, and ``:streamGenerateContent?alt=sse`` for streams,
with the key in the ``x-goog-api-key`` header (never in the URL, where it would reach access logs). Vertex AI
(``type: vertex``, ``VertexAdapter``) serves the same bodies at another path with an OAuth bearer token: it
overrides only ``url_for_call`` and ``auth_headers``.

Request: OpenAI messages become ``contents`` of ``user``/``model`` turns (consecutive turns of one role merged),
system and developer messages the ``systemInstruction`` (one text part per client text part, in order, each
unaltered); tools become ``functionDeclarations`` whose JSON Schema
is converted to the OpenAPI subset Gemini's ``Schema`` accepts (``convert_schema``; what it had to drop goes to
the decision trace as the upstream request's notes); parameters go to ``generationConfig``.
Response and stream: ``candidates`` become ``choices``; ``thought`` parts become ``reasoning``; function calls
become ``tool_calls`` with deterministic ids (``call_<index>_<hash>``; a ``thoughtSignature`` rides along in
the id after ``__thought__`` so that the next turn can hand it back, as Gemini 2.5+/3 require); the usage of
``usageMetadata`` is kept for accounting (thoughts count as completion tokens, cached content as cached prompt
tokens). A stream has no ``[DONE]``: a clean end after a ``finishReason`` is complete, any other end is a cut.
Gemini has no end-user field, so ``call.end_user`` is not sent; OpenAI parameters Gemini lacks (``logit_bias``,
``parallel_tool_calls``, audio output, ...) are left out.

Wire format, looked up with the search tool (docs, code and issues corpora):
- Request/response fields: the v1beta protos (``@google-ai/generativelanguage`` ISchema, IGenerationConfig),
  js-genai ``types.Schema``, ``FunctionCallingConfig`` modes AUTO/ANY/NONE (+ ``allowedFunctionNames`` only
  with ANY), ``FunctionResponse.response`` "in JSON object format. Use "output" key to specify function
  output" (js-genai / Vertex reference), ``generationConfig.responseJsonSchema``/``responseSchema``.
- Schema formats on the Developer API: "this must be either 'enum' or 'date-time', otherwise requests will
  fail" for strings (Firebase AI Logic ``SchemaShared``); int32/int64 and float/double for numbers.
- Rejected keywords: "Invalid JSON payload received. Unknown name "$schema" at
  'tools[0].function_declarations[0].parameters': Cannot find field." (janhq/jan#5927), the same for
  ``ref`` (mnfst/llm-gateway#1858) and ``title``/``"null"`` types in old API versions (simonw/llm-gemini#49).
- Thinking: OpenAI-compatible ``reasoning_effort`` low/medium/high is "1K, 8K, and 24K thinking token budgets",
  "none" disables (ai.google.dev/gemini-api/docs/openai); Gemini 3 uses ``thinkingLevel`` instead, and both
  together are a 400 (gemini_ex ThinkingConfig docs).
- Streams: ``data: {GenerateContentResponse}`` events framed with CRLF (Routstr/routstr-core tests, nyro#265),
  no ``[DONE]`` (nullclaw#127); real recordings (junjihashimoto/louter test-data/gemini) carry
  ``usageMetadata``, ``modelVersion`` and ``responseId`` on every chunk, ``thoughtsTokenCount`` separately.
- Errors: ``{"error": {"code", "message", "status", "details"}}``, a JSON array of them from the
  non-SSE stream endpoint (continuedev/continue#8516); a bad key is a 400 with reason ``API_KEY_INVALID``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import mimetypes
import struct
import uuid
from collections.abc import Mapping
from time import time
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote_to_bytes, urlsplit

import msgspec
from msgspec import Struct

from mux.errors import InvalidRequest, MuxError, UpstreamError, redact
from mux.providers.base import Call, Completion, EmbeddingCall, UpstreamRequest, malformed, upstream_error
from mux.providers.gemini_schema import convert_schema
from mux.sse import SSEEvent
from mux.wire.openai import (
    AllowedToolsChoice,
    AssistantMessage,
    AudioPart,
    ChatCompletion,
    ChatCompletionChunk,
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
    from mux.wire.openai import ChatRequest


# --- request -------------------------------------------------------------------------------------------------

_SIGNATURE_MARK = "__thought__"
# reasoning_effort -> thinkingBudget (2.5 models) as Google's own OpenAI-compatible endpoint maps it.
_BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
# reasoning_effort -> thinkingLevel (Gemini 3 models, which take levels instead of budgets).
_LEVELS = {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high"}


class _Builder:
    """Builds one ``GenerateContentRequest`` body; collects the schema keywords it had to drop."""

    __slots__ = ("request", "model", "dropped")

    def __init__(self, request: ChatRequest, model: str) -> None:
        self.request = request
        self.model = model
        self.dropped: list[str] = []

    def body(self) -> dict[str, Any]:
        system, contents = self.contents()
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        tools, tool_config = self.tools()
        if tools:
            body["tools"] = tools
            if tool_config:
                body["toolConfig"] = tool_config
        config = self.generation_config()
        if config:
            body["generationConfig"] = config
        return body

    # messages ------------------------------------------------------------------------------------------------

    def contents(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        system: list[dict[str, Any]] = []
        contents: list[dict[str, Any]] = []
        names: dict[str, str] = {}  # tool call id -> function name, from earlier assistant turns
        for i, message in enumerate(self.request.messages):
            if isinstance(message, (SystemMessage, DeveloperMessage)):
                system.extend(_text_parts(message.content))
            elif isinstance(message, UserMessage):
                _append(contents, "user", self.user_parts(message.content, i))
            elif isinstance(message, AssistantMessage):
                parts: list[dict[str, Any]] = []
                if isinstance(message.content, str):
                    parts.extend(_text_parts(message.content))
                elif message.content:
                    for content_part in message.content:
                        text = content_part.text if isinstance(content_part, TextPart) else content_part.refusal
                        if text:
                            parts.append({"text": text})
                for j, tool_call in enumerate(message.tool_calls or ()):
                    names[tool_call.id] = tool_call.function.name
                    call_part: dict[str, Any] = {
                        "functionCall": {
                            "name": tool_call.function.name,
                            "args": _arguments(tool_call.function.arguments, f"messages[{i}].tool_calls[{j}]"),
                        }
                    }
                    signature = signature_of(tool_call.id)
                    if signature:
                        call_part["thoughtSignature"] = signature
                    parts.append(call_part)
                _append(contents, "model", parts)
            elif isinstance(message, ToolMessage):
                name = names.get(message.tool_call_id)
                if name is None:
                    raise InvalidRequest(
                        f"messages[{i}].tool_call_id: no earlier assistant message has a tool call with id "
                        f"'{message.tool_call_id}'.",
                        param=f"messages[{i}].tool_call_id",
                    )
                text = message.content if isinstance(message.content, str) else "".join(p.text for p in message.content)
                _append(contents, "user", [{"functionResponse": {"name": name, "response": _tool_result(text)}}])
        return system, contents

    def user_parts(self, content: Any, index: int) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return _text_parts(content)
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            where = f"messages[{index}].content[{j}]"
            if isinstance(part, TextPart):
                parts.extend(_text_parts(part.text))
            elif isinstance(part, ImagePart):
                parts.append(_media_part(part.image_url.url, "image/jpeg", where))
            elif isinstance(part, AudioPart):
                data = part.input_audio.data
                parts.append({"inlineData": {"mimeType": f"audio/{part.input_audio.format}", "data": data}})
            elif isinstance(part, FilePart):
                ref = part.file
                if ref.file_data:
                    default = mimetypes.guess_type(ref.filename or "")[0] or "application/pdf"
                    parts.append(_media_part(ref.file_data, default, where))
                elif ref.file_id:
                    mime = mimetypes.guess_type(ref.filename or ref.file_id)[0] or "application/pdf"
                    parts.append({"fileData": {"mimeType": mime, "fileUri": ref.file_id}})
                else:
                    raise InvalidRequest(f"{where}.file needs file_data or file_id.", param=f"{where}.file")
        return parts

    # tools ----------------------------------------------------------------------------------------------------

    def tools(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        request = self.request
        if not request.tools:
            return [], None
        declarations = []
        for i, tool in enumerate(request.tools):
            if isinstance(tool, CustomTool):
                raise InvalidRequest(
                    f"tools[{i}]: Gemini has no custom (free-form) tools; use a function tool.",
                    param=f"tools[{i}]",
                    code="unsupported_parameter",
                )
            function = tool.function
            declaration: dict[str, Any] = {"name": function.name}
            if function.description:
                declaration["description"] = function.description
            if function.strict is not None:
                self.dropped.append(f"tools[{i}].function: strict")
            if function.parameters:
                schema, dropped = convert_schema(function.parameters, f"tools[{i}].function.parameters")
                self.dropped.extend(dropped)
                if schema.get("properties"):
                    schema["type"] = "OBJECT"
                    declaration["parameters"] = schema
            declarations.append(declaration)

        choice = request.tool_choice
        config: dict[str, Any] | None = None
        if choice == "none":
            config = {"mode": "NONE"}
        elif choice == "auto":
            config = {"mode": "AUTO"}
        elif choice == "required":
            config = {"mode": "ANY"}
        elif isinstance(choice, NamedToolChoice):
            config = {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
        elif isinstance(choice, AllowedToolsChoice):
            allowed = [
                t.get("function", {}).get("name")
                for t in choice.allowed_tools.get("tools", ())
                if isinstance(t, dict) and isinstance(t.get("function"), dict)
            ]
            allowed = [name for name in allowed if isinstance(name, str)]
            if choice.allowed_tools.get("mode") == "required":
                config = {"mode": "ANY", "allowedFunctionNames": allowed}
            else:  # AUTO cannot name functions: declare only the allowed ones
                declarations = [d for d in declarations if d["name"] in allowed]
                config = {"mode": "AUTO"}
        elif isinstance(choice, CustomToolChoice):
            raise InvalidRequest(
                "tool_choice: Gemini has no custom tools.", param="tool_choice", code="unsupported_parameter"
            )
        tools = [{"functionDeclarations": declarations}] if declarations else []
        return tools, ({"functionCallingConfig": config} if config else None)

    # generation config ----------------------------------------------------------------------------------------

    def generation_config(self) -> dict[str, Any]:
        r = self.request
        config: dict[str, Any] = {}
        if r.temperature is not None:
            config["temperature"] = r.temperature
        if r.top_p is not None:
            config["topP"] = r.top_p
        limit = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
        if limit is not None:
            config["maxOutputTokens"] = limit
        if r.stop is not None:
            stops = [r.stop] if isinstance(r.stop, str) else list(r.stop)
            if stops:
                config["stopSequences"] = stops
        if r.n is not None:
            config["candidateCount"] = r.n
        if r.seed is not None:
            config["seed"] = r.seed
        if r.presence_penalty is not None:
            config["presencePenalty"] = r.presence_penalty
        if r.frequency_penalty is not None:
            config["frequencyPenalty"] = r.frequency_penalty
        if r.logprobs:
            config["responseLogprobs"] = True
            if r.top_logprobs:
                config["logprobs"] = r.top_logprobs
        fmt = r.response_format
        if isinstance(fmt, JsonObjectFormat):
            config["responseMimeType"] = "application/json"
        elif isinstance(fmt, JsonSchemaFormat):
            config["responseMimeType"] = "application/json"
            if fmt.json_schema.schema:
                schema, dropped = convert_schema(fmt.json_schema.schema, "response_format.json_schema.schema")
                self.dropped.extend(dropped)
                if schema:
                    config["responseSchema"] = schema
        thinking = self.thinking()
        if thinking:
            config["thinkingConfig"] = thinking
        return config

    def thinking(self) -> dict[str, Any] | None:
        """``reasoning_effort`` / ``reasoning`` -> ``thinkingConfig``; thoughts are asked for (``includeThoughts``)
        so they can be returned as ``reasoning``, unless ``reasoning.exclude``."""
        r = self.request
        effort = r.reasoning_effort
        budget: int | None = None
        exclude = False
        enabled = None
        if r.reasoning is not None:
            effort = effort or r.reasoning.effort
            budget = r.reasoning.max_tokens
            exclude = bool(r.reasoning.exclude)
            enabled = r.reasoning.enabled
            if enabled is False:
                effort, budget = "none", None
        if effort is None and budget is None and not enabled:
            return None
        model = self.model.removeprefix("models/")
        if model.startswith("gemini-3"):
            config: dict[str, Any] = {"thinkingLevel": _LEVELS[effort]} if effort else {}
            if budget is not None and not effort:
                config = {"thinkingBudget": budget}
            off = False
        else:
            if budget is None:
                budget = 0 if effort == "none" else _BUDGETS.get(effort or "", -1)  # -1: dynamic
            if budget == 0 and model.startswith("gemini-2.5-pro"):
                budget = 128  # 2.5 Pro cannot stop thinking; 128 is its smallest budget
            config = {"thinkingBudget": budget}
            off = budget == 0
        if not off and not exclude:
            config["includeThoughts"] = True
        return config


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Add a turn, merged into the previous one if it has the same role (Gemini expects alternation)."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text_parts(content: Any) -> list[dict[str, Any]]:
    """Text as parts; empty texts are left out (an empty part is a 400 at Gemini)."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    return [{"text": p.text} for p in content if p.text]


def _media_part(url: str, default_mime: str, where: str) -> dict[str, Any]:
    """A ``data:`` URL as ``inlineData``; an http(s) URL as ``fileData`` with the MIME type its extension gives."""
    if url.startswith("data:"):
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise InvalidRequest(f"{where}: malformed data URL.", param=where)
        fields = header.split(";")
        mime = fields[0] or default_mime
        if "base64" in fields[1:]:
            data = "".join(payload.split())
        else:
            data = base64.b64encode(unquote_to_bytes(payload)).decode()
        return {"inlineData": {"mimeType": mime, "data": data}}
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "gs"):
        raise InvalidRequest(f"{where}: only data:, http(s): and gs: URLs are supported.", param=where)
    mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _arguments(arguments: str, where: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        raise InvalidRequest(
            f"{where}.function.arguments is not valid JSON.", param=f"{where}.function.arguments"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}.function.arguments must be a JSON object.", param=f"{where}.function.arguments")
    return value


def _tool_result(text: str) -> dict[str, Any]:
    """A tool message as ``functionResponse.response``, which must be an object: a JSON object is passed as
    it is, anything else is wrapped as ``{"output": ...}`` (the key Google documents for function output)."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return {"output": text}
    return value if isinstance(value, dict) else {"output": value}


def call_id(index: int, name: str, args: Any, signature: str | None = None, upstream_id: str | None = None) -> str:
    """The OpenAI id of a Gemini function call: the upstream's id if it sent one, else ``call_<index>_<hash>``
    (same call, same id, streamed or not); a thought signature is carried after ``__thought__``."""
    if upstream_id:
        base = upstream_id
    else:
        digest = hashlib.sha256(name.encode() + b"\0" + _canonical(args)).hexdigest()[:12]
        base = f"call_{index}_{digest}"
    return f"{base}{_SIGNATURE_MARK}{signature}" if signature else base


def signature_of(tool_call_id: str) -> str | None:
    """The thought signature carried in a tool call id made by ``call_id``, if any."""
    _, _, signature = tool_call_id.partition(_SIGNATURE_MARK)
    return signature or None


def _canonical(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


# --- response ------------------------------------------------------------------------------------------------


class _FunctionCall(Struct):
    name: str = ""
    args: dict[str, Any] | None = None
    id: str | None = None


class _Part(Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    function_call: _FunctionCall | None = None


class _Content(Struct):
    parts: list[_Part] = []
    role: str | None = None


class _TokenLogprob(Struct, rename="camel"):
    token: str = ""
    log_probability: float = 0.0


class _TopCandidates(Struct):
    candidates: list[_TokenLogprob] = []


class _LogprobsResult(Struct, rename="camel"):
    top_candidates: list[_TopCandidates] = []
    chosen_candidates: list[_TokenLogprob] = []


class _Candidate(Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None
    index: int = 0
    logprobs_result: _LogprobsResult | None = None


class _UsageMetadata(Struct, rename="camel"):
    prompt_token_count: int = 0
    cached_content_token_count: int = 0
    candidates_token_count: int = 0
    tool_use_prompt_token_count: int = 0
    thoughts_token_count: int = 0


class _PromptFeedback(Struct, rename="camel"):
    block_reason: str | None = None


class _Response(Struct, rename="camel"):
    candidates: list[_Candidate] = []
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: _UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: Any = None


_response_decoder = msgspec.json.Decoder(_Response)

# Gemini finishReason -> OpenAI finish_reason; unlisted reasons (OTHER, MALFORMED_FUNCTION_CALL, ...) are "stop".
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}


def finish_reason(reason: str | None, has_tool_calls: bool) -> str:
    mapped = FINISH_REASONS.get(reason or "STOP", "stop")
    return "tool_calls" if mapped == "stop" and has_tool_calls else mapped


def usage_of(meta: _UsageMetadata) -> Usage:
    """``usageMetadata`` as OpenAI usage: thoughts are completion (reasoning) tokens, cached content is cached
    prompt, tool-use prompt tokens are prompt."""
    prompt = meta.prompt_token_count + meta.tool_use_prompt_token_count
    completion = meta.candidates_token_count + meta.thoughts_token_count
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    if meta.cached_content_token_count:
        usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=meta.cached_content_token_count)
    if meta.thoughts_token_count:
        usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=meta.thoughts_token_count)
    return usage


def _logprobs(result: _LogprobsResult | None) -> dict[str, Any] | None:
    if result is None or not result.chosen_candidates:
        return None
    content = []
    for i, chosen in enumerate(result.chosen_candidates):
        top = result.top_candidates[i].candidates if i < len(result.top_candidates) else []
        content.append(
            {
                "token": chosen.token,
                "logprob": chosen.log_probability,
                "bytes": list(chosen.token.encode()),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.log_probability, "bytes": list(t.token.encode())} for t in top
                ],
            }
        )
    return {"content": content, "refusal": None}


def _completion_id(response_id: str | None) -> str:
    return f"chatcmpl-{response_id}" if response_id else f"chatcmpl-{uuid.uuid4().hex}"


class _ContentEmbedding(Struct):
    values: list[float]


class _EmbeddingUsage(Struct, rename="camel"):
    prompt_token_count: int | None = None


class _BatchEmbeddings(Struct, rename="camel"):
    embeddings: list[_ContentEmbedding]
    usage_metadata: _EmbeddingUsage | None = None


_embeddings_decoder = msgspec.json.Decoder(_BatchEmbeddings)


def _in_band_error(provider: ProviderConfig, error: Any) -> UpstreamError:
    message, status, _, _ = _error_fields(error)
    text = f"Provider '{provider.name}' reported an error: {message or 'stream failed'}"
    if status:
        text += f" ({status})"
    return UpstreamError(redact(text, (provider.api_key,)), code="upstream_error")


# --- errors --------------------------------------------------------------------------------------------------


def _error_fields(error: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """Answer (message, status, ErrorInfo reason, RetryInfo delay in seconds) of a Google ``error`` object."""
    if not isinstance(error, dict):
        return (error[:1000] if isinstance(error, str) else None), None, None, None
    message = error.get("message") if isinstance(error.get("message"), str) else None
    status = error.get("status") if isinstance(error.get("status"), str) else None
    reason = delay = None
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind = detail.get("@type", "")
        if not isinstance(kind, str):
            continue
        if kind.endswith("ErrorInfo") and isinstance(detail.get("reason"), str):
            reason = detail["reason"]
        elif kind.endswith("RetryInfo") and isinstance(detail.get("retryDelay"), str):
            try:
                delay = str(math.ceil(float(detail["retryDelay"].rstrip("s"))))
            except ValueError:
                pass
    return (message[:1000] if message else None), status, reason, delay


def google_error(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """Read a Google error body, bare or (from the JSON-array stream endpoint) wrapped in a list."""
    try:
        parsed = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None, None, None, None
    if isinstance(parsed, list):
        parsed = parsed[0] if parsed else None
    if not isinstance(parsed, dict):
        return None, None, None, None
    return _error_fields(parsed.get("error"))


# --- the adapter ---------------------------------------------------------------------------------------------


class GeminiAdapter:
    """The Gemini Developer API (AI Studio)."""

    type_name: ClassVar[str] = "gemini"
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com"
    env_keys: ClassVar[tuple[str, ...]] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    model_prefixes: ClassVar[tuple[str, ...]] = ("gemini-",)

    def url_for_call(self, provider: ProviderConfig, call: Call) -> str:
        model = quote(call.model.removeprefix("models/"), safe="-._~")
        if call.stream:
            return provider.url_for(f"/v1beta/models/{model}:streamGenerateContent?alt=sse")
        return provider.url_for(f"/v1beta/models/{model}:generateContent")

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        return {"x-goog-api-key": provider.api_key} if provider.api_key else {}

    def request_body(self, call: Call) -> tuple[dict[str, Any], list[str]]:
        """Answer the ``GenerateContentRequest`` for ``call`` and the schema keywords dropped to build it."""
        builder = _Builder(call.request, call.model)
        return builder.body(), builder.dropped

    def dropped_keywords(self, call: Call) -> list[str]:
        """What the schema conversion for ``call`` drops (``"<path>: <keyword>"``), for the decision trace."""
        return self.request_body(call)[1]

    def build_request(self, provider: ProviderConfig, call: Call) -> UpstreamRequest:
        """The upstream request; schema keywords Gemini would refuse are dropped and named in its notes."""
        body, dropped = self.request_body(call)
        headers = {"content-type": "application/json", **provider.headers, **self.auth_headers(provider)}
        notes = [f"dropped schema keyword {keyword}: not accepted by Gemini" for keyword in dropped]
        return UpstreamRequest("POST", self.url_for_call(provider, call), headers, encoder.encode(body), notes)

    def build_embeddings(self, provider: ProviderConfig, call: EmbeddingCall) -> UpstreamRequest:
        """``:batchEmbedContents`` with one request per input string (``dimensions`` as
        ``outputDimensionality``); token-id inputs are refused: Gemini embeds text."""
        inputs = [call.request.input] if isinstance(call.request.input, str) else call.request.input
        if not all(isinstance(item, str) for item in inputs):
            raise InvalidRequest("Gemini embeds text: 'input' must be a string or a list of strings.", param="input")
        model = call.model.removeprefix("models/")
        requests = []
        for text in inputs:
            item: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
            if call.request.dimensions is not None:
                item["outputDimensionality"] = call.request.dimensions
            requests.append(item)
        url = provider.url_for(f"/v1beta/models/{quote(model, safe='-._~')}:batchEmbedContents")
        headers = {"content-type": "application/json", **provider.headers, **self.auth_headers(provider)}
        return UpstreamRequest("POST", url, headers, encoder.encode({"requests": requests}))

    def parse_embeddings(self, provider: ProviderConfig, call: EmbeddingCall, body: bytes) -> Completion:
        """Answer OpenAI's embedding list. Usage is Gemini's ``usageMetadata.promptTokenCount`` when it sends
        one, else an estimate of four characters a token (its batch answer may carry no counts)."""
        try:
            answer = _embeddings_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise malformed(provider, "a body that is not a BatchEmbedContentsResponse") from None
        base64_wanted = call.request.encoding_format == "base64"
        data = []
        for index, embedding in enumerate(answer.embeddings):
            values: Any = embedding.values
            if base64_wanted:  # OpenAI's base64 form: little-endian float32, whatever this machine's byte order
                values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            data.append({"object": "embedding", "index": index, "embedding": values})
        inputs = [call.request.input] if isinstance(call.request.input, str) else call.request.input
        counted = answer.usage_metadata.prompt_token_count if answer.usage_metadata else None
        tokens = counted if counted is not None else sum(math.ceil(len(t) / 4) for t in inputs if isinstance(t, str))
        usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
        reply = {
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }  # OpenAI's embedding usage shape
        return Completion(body=encoder.encode(reply), usage=usage, model=call.model)

    def parse_response(self, provider: ProviderConfig, call: Call, body: bytes) -> Completion:
        try:
            response = _response_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise malformed(provider, "a body that is not a GenerateContentResponse") from None
        if response.error is not None:
            raise _in_band_error(provider, response.error)
        usage = usage_of(response.usage_metadata) if response.usage_metadata is not None else None
        model = response.model_version or call.model
        choices = []
        if not response.candidates:
            feedback = response.prompt_feedback
            if feedback is None or not feedback.block_reason:
                raise malformed(provider, "neither candidates nor a prompt block reason")
            choices.append(Choice(index=0, message=ResponseMessage(content=""), finish_reason="content_filter"))
        for candidate in sorted(response.candidates, key=lambda c: c.index):
            texts: list[str] = []
            thoughts: list[str] = []
            calls: list[Any] = []
            for part in candidate.content.parts if candidate.content else ():
                if part.function_call is not None:
                    fc = part.function_call
                    args = fc.args or {}
                    calls.append(
                        ResponseToolCall(
                            id=call_id(len(calls), fc.name, args, part.thought_signature, fc.id),
                            function=FunctionCall(name=fc.name, arguments=encoder.encode(args).decode()),
                        )
                    )
                elif part.text is not None:
                    (thoughts if part.thought else texts).append(part.text)
            message = ResponseMessage(
                content="".join(texts) if texts or not calls else None,
                tool_calls=calls or None,
                reasoning="".join(thoughts) if thoughts else None,
            )
            choices.append(
                Choice(
                    index=candidate.index,
                    message=message,
                    finish_reason=finish_reason(candidate.finish_reason, bool(calls)),
                    logprobs=_logprobs(candidate.logprobs_result),
                )
            )
        completion = ChatCompletion(
            id=_completion_id(response.response_id), created=int(time()), model=model, choices=choices, usage=usage
        )
        return Completion(
            body=encoder.encode(completion),
            usage=usage,
            model=model,
            response_id=completion.id,
            finish_reason=next((c.finish_reason for c in choices if c.finish_reason), None),
        )

    def parse_error(self, provider: ProviderConfig, status: int, body: bytes, headers: Mapping[str, str]) -> MuxError:
        message, google_status, reason, delay = google_error(body)
        if reason in ("API_KEY_INVALID", "API_KEY_EXPIRED") and status == 400:
            status = 401  # the gateway's key is bad: not the client's fault
        if message and google_status:
            message = f"{message} ({google_status})"
        if delay and headers.get("retry-after") is None:
            headers = {"retry-after": delay}
        return upstream_error(provider, status, body, headers, message=message)

    def stream_translator(self, provider: ProviderConfig, call: Call) -> GeminiStream:
        return GeminiStream(provider, call.model)


class _ChoiceState:
    __slots__ = ("role_sent", "tool_calls", "finish")

    def __init__(self) -> None:
        self.role_sent = False
        self.tool_calls = 0
        self.finish: str | None = None


class GeminiStream:
    """Translates ``alt=sse`` events (each a whole ``GenerateContentResponse``) into OpenAI chunks.

    Text and thoughts are relayed as they come, each function call as one whole delta; the finish chunks wait
    for the upstream's end (Gemini may repeat a ``finishReason`` on several chunks and send a trailing chunk
    after it), and ``close`` fails the stream as cut if no ``finishReason`` (or prompt block) ever arrived."""

    __slots__ = ("provider", "usage", "model", "id", "created", "_requested", "_choices", "_finished")

    def __init__(self, provider: ProviderConfig, model: str, *, created: int | None = None) -> None:
        self.provider = provider
        self.usage: Usage | None = None
        self.model: str | None = None
        self.id: str | None = None
        self.created: int | None = int(time()) if created is None else created
        self._requested = model
        self._choices: dict[int, _ChoiceState] = {}
        self._finished = False

    def _state(self, index: int) -> _ChoiceState:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState()
        return state

    def _chunk(self, choices: list[ChunkChoice]) -> bytes:
        return encoder.encode(
            ChatCompletionChunk(
                id=self.id or "", created=self.created or 0, model=self.model or self._requested, choices=choices
            )
        )

    def feed(self, event: SSEEvent) -> list[bytes]:
        data = event.data
        if not data.strip():
            return []
        try:
            chunk = _response_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise malformed(self.provider, "a stream event that is not a GenerateContentResponse") from None
        if chunk.error is not None:
            raise _in_band_error(self.provider, chunk.error)
        if self.id is None:
            self.id = _completion_id(chunk.response_id)
        if self.model is None:
            self.model = chunk.model_version or self._requested
        if chunk.usage_metadata is not None:
            self.usage = usage_of(chunk.usage_metadata)
        if not chunk.candidates:
            feedback = chunk.prompt_feedback
            if feedback is not None and feedback.block_reason:
                self._state(0).finish = "content_filter"
                self._finished = True
            return []
        out = []
        for candidate in chunk.candidates:
            state = self._state(candidate.index)
            texts: list[str] = []
            thoughts: list[str] = []
            calls: list[Any] = []
            for part in candidate.content.parts if candidate.content else ():
                if part.function_call is not None:
                    fc = part.function_call
                    args = fc.args or {}
                    calls.append(
                        DeltaToolCall(
                            index=state.tool_calls,
                            type="function",
                            id=call_id(state.tool_calls, fc.name, args, part.thought_signature, fc.id),
                            function=DeltaToolCallFunction(name=fc.name, arguments=encoder.encode(args).decode()),
                        )
                    )
                    state.tool_calls += 1
                elif part.text:
                    (thoughts if part.thought else texts).append(part.text)
            logprobs = _logprobs(candidate.logprobs_result)
            if texts or thoughts or calls or logprobs:
                delta = Delta(
                    role=None if state.role_sent else "assistant",
                    content="".join(texts) if texts else None,
                    reasoning="".join(thoughts) if thoughts else None,
                    tool_calls=calls or None,
                )
                state.role_sent = True
                out.append(self._chunk([ChunkChoice(index=candidate.index, delta=delta, logprobs=logprobs)]))
            if candidate.finish_reason:
                state.finish = FINISH_REASONS.get(candidate.finish_reason, "stop")
                self._finished = True
        return out

    def close(self) -> list[bytes]:
        """The upstream ended: answer the finish chunks, or raise ``upstream_stream_cut`` if it never finished."""
        if not self._finished:
            raise UpstreamError(
                f"Provider '{self.provider.name}' ended the stream before it was complete.", code="upstream_stream_cut"
            )
        out = []
        for index in sorted(self._choices):
            state = self._choices[index]
            reason = state.finish or "stop"
            if reason == "stop" and state.tool_calls:
                reason = "tool_calls"
            delta = Delta() if state.role_sent else Delta(role="assistant", content="")
            out.append(self._chunk([ChunkChoice(index=index, delta=delta, finish_reason=reason)]))
        return out


class VertexAdapter(GeminiAdapter):
    """Gemini on Vertex AI: ``{base_url}/v1/projects/{project}/locations/{location}/publishers/google/models/
    {model}:generateContent`` (and ``:streamGenerateContent?alt=sse``), with ``api_key`` sent as an OAuth
    bearer token (mux does not mint tokens: give it one, e.g. from ``gcloud auth print-access-token``, and
    reload before it expires). ``base_url`` is the regional endpoint, e.g.
    ``https://us-central1-aiplatform.googleapis.com``. Embeddings are not served for this type."""

    type_name: ClassVar[str] = "vertex"
    default_base_url: ClassVar[str] = ""
    env_keys: ClassVar[tuple[str, ...]] = ()
    model_prefixes: ClassVar[tuple[str, ...]] = ()

    def url_for_call(self, provider: ProviderConfig, call: Call) -> str:
        if not provider.project:
            raise InvalidRequest(
                f"Provider '{provider.name}' (vertex) has no 'project' configured.",
                param="model",
                code="provider_not_configured",
            )
        model = quote(call.model.removeprefix("models/"), safe="-._~")
        location = quote(provider.location or "us-central1", safe="-")
        path = f"/v1/projects/{quote(provider.project, safe='-')}/locations/{location}/publishers/google/models/{model}"
        return provider.url_for(path + (":streamGenerateContent?alt=sse" if call.stream else ":generateContent"))

    def auth_headers(self, provider: ProviderConfig) -> dict[str, str]:
        return {"authorization": "Bearer " + provider.api_key} if provider.api_key else {}

    def build_embeddings(self, provider: ProviderConfig, call: EmbeddingCall) -> UpstreamRequest:
        raise InvalidRequest(
            f"Provider '{provider.name}' (type vertex) does not serve embeddings through mux.",
            param="model",
            code="unsupported_operation",
        )


ADAPTER = GeminiAdapter()
VERTEX = VertexAdapter()
