"""A strict fake of Anthropic's Messages API (``POST /v1/messages``), as a pure ASGI app, for end-to-end tests.

Serve it with ``tests.servers.serve(FakeAnthropic(...))`` and point a provider of ``type: anthropic`` at its URL.
It records every request (``FakeAnthropic.requests``, ``.last``) and answers from a per-test script
(``FakeAnthropic.script(Reply(...))``): text, tool_use and thinking blocks, any stop reason and usage (cache
fields included), HTTP errors with Anthropic's bodies, an in-stream ``error`` event, a stream cut short.
Unscripted, it echoes the last user text; when ``tool_choice`` forces a tool it answers with a ``tool_use``
whose input is a minimal instance of that tool's schema.

As strict as the real API where mux could go wrong (each rule from the sources below):
- a key required, in ``x-api-key`` (or ``Authorization: Bearer``, as the installed SDK sends it): 401
  ``authentication_error`` "x-api-key header is required" / "invalid x-api-key"; ``anthropic-version``
  required (400 "anthropic-version: header is required") and a known version.
- ``model``, ``max_tokens``, ``messages`` required ("<field>: Field required"); unknown top-level fields
  refused ("<field>: Extra inputs are not permitted"); unknown models answer 404 ``not_found_error``
  "model: <name>"; ``max_tokens`` above the model's output maximum is refused with the API's wording.
- ``system`` a string or a list of text blocks (non-empty, no other block type or key);
- ``temperature`` and ``top_p`` in 0..1; ``metadata`` only ``user_id``; ``thinking.budget_tokens`` >= 1024
  and < ``max_tokens``; with thinking, ``temperature`` only 1, no ``top_k``, ``top_p`` >= 0.95 and no forced
  ``tool_choice``.
- Messages: roles ``user`` / ``assistant`` only (no ``system`` role: the system prompt is top-level); the first
  must be ``user``; consecutive turns of one role are merged into one turn, as the API documents; text blocks
  must be non-empty; images need a base64 source of jpeg/png/gif/webp or a url source; ``tool_use`` only in
  assistant turns, ``tool_result`` only in user turns; each ``tool_use`` must be answered by a ``tool_result``
  in the very next turn, each ``tool_result`` must answer a ``tool_use`` of the turn before it, and in that
  turn the ``tool_result`` blocks come first; a final assistant turn (prefill) may not end in whitespace.
- Tools: ``name`` matching ``^[a-zA-Z0-9_-]{1,64}$``, unique; ``input_schema`` an object schema; ``tool_choice``
  one of auto/any/tool/none, ``tool`` naming a defined tool.
- Streams: the event sequence of the real API, each as ``event: <type>`` + ``data: <json>``: message_start
  (content empty, usage with input and cache counts), then per block content_block_start, deltas
  (text_delta / input_json_delta starting with an empty ``partial_json`` / thinking_delta then
  signature_delta), content_block_stop, a ``ping`` after the first block start, then message_delta
  (stop_reason, cumulative output usage) and message_stop.

Sources (looked up with the search tool): Anthropic API reference "Messages" (required fields, the merging of
consecutive turns: "Consecutive user or assistant turns in your request will be combined into a single turn",
as quoted by several stored copies of the reference and the installed ``anthropic`` SDK's
``MessageCreateParamsBase`` docstring), "Streaming Messages" (event flow and the three recorded example
streams: basic, tool use with ``input_json_delta``, extended thinking with ``signature_delta`` — a stored copy
of the docs in the code corpus), "Errors" (``{"type": "error", "error": {"type", "message"}, "request_id"}``;
400 invalid_request_error, 401 authentication_error, 403 permission_error, 404 not_found_error, 413
request_too_large, 429 rate_limit_error, 500 api_error, 529 overloaded_error; in-stream errors such as
``overloaded_error``), "Handle tool calls" ("Tool result blocks must immediately follow their corresponding
tool use blocks", "tool_result blocks must come FIRST in the content array"), "Extended thinking"
(budget_tokens >= 1024 and < max_tokens; forced tool use and temperature/top_k changes are incompatible),
"Models overview" (output maxima, snapshot names), and public error reports for exact wordings
(``messages: first message must use the "user" role``, "tool_use ids were found without tool_result blocks
immediately after", "final assistant content cannot end with trailing whitespace").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mux.asgi import answer_lifespan

# The version mux sends, and the one the installed ``anthropic`` SDK sends (it authenticates with
# ``Authorization: Bearer <key>``, which the fake accepts as well as ``x-api-key``).
API_VERSIONS = frozenset({"2023-06-01", "2026-10-21"})

ACCEPTED_PARAMS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "cache_control",
        "container",
        "context_management",
        "inference_geo",
        "mcp_servers",
        "metadata",
        "output_config",
        "service_tier",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    }
)

# Alias -> the dated snapshot the API answers with; dated names answer as themselves.
DEFAULT_MODELS = {
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-3-haiku-20240307": "claude-3-haiku-20240307",
}
# Output maxima per snapshot family ("Models overview").
MAX_OUTPUT = (
    ("claude-opus-4-5", 64000),
    ("claude-opus-4", 32000),
    ("claude-sonnet-4", 64000),
    ("claude-haiku-4", 64000),
    ("claude-3-7-sonnet", 64000),
    ("claude-3-5-haiku", 8192),
    ("claude-3-haiku", 4096),
)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
STOP_REASONS = (
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
DEFAULT_ERROR_MESSAGES = {
    400: "messages: text content blocks must be non-empty",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your API key does not have permission to use the specified resource.",
    404: "The requested resource could not be found.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit. Please try again later.",
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}


class Invalid(Exception):
    """A request the real API would refuse: status, error type, message."""

    def __init__(self, message: str, status: int = 400, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


# --- scripting ---------------------------------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class ToolUse:
    name: str
    input: dict[str, Any]
    id: str | None = None


@dataclass
class Thinking:
    thinking: str
    signature: str = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"


Block = Text | ToolUse | Thinking


@dataclass
class Reply:
    """How the fake answers one valid request. Unset fields take realistic defaults.

    - ``status`` >= 400: Anthropic's error body (``error_type`` / ``message`` override) with ``headers``.
    - ``blocks``: the content; ``stop_reason`` defaults to tool_use when a ToolUse is present, else end_turn.
    - ``usage``: the usage object (input_tokens, output_tokens, cache_read_input_tokens,
      cache_creation_input_tokens); defaults are derived from the request and the answer.
    - streams: ``error_after=K`` sends an ``error`` event (``stream_error`` type, overloaded_error by default)
      after K events and ends; ``cut_after=K`` ends the body after K events without message_stop;
      ``event_delay_s`` pauses between events (so earlier events reach the client in their own reads).
    """

    status: int = 200
    error_type: str | None = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    blocks: list[Block] | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: dict[str, int] | None = None
    model: str | None = None
    error_after: int | None = None
    stream_error: str = "overloaded_error"
    cut_after: int | None = None
    event_delay_s: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    status: int | None = None


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


class FakeAnthropic:
    """The fake upstream; it runs on the server thread, tests read its records from theirs."""

    def __init__(self, *, api_key: str = "sk-ant-fake-0123456789abcdef", models: dict[str, str] | None = None) -> None:
        self.api_key = api_key
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.url = ""
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._ids = itertools.count(1)

    def reset(self) -> None:
        self.requests = []
        self._script.clear()

    def script(self, *replies: Reply) -> None:
        """Queue replies; each valid request takes the next one, then the fake answers by default."""
        self._script.extend(replies)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    # --- ASGI ----------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        record = Recorded(scope["method"], scope["path"], headers)
        self.requests.append(record)
        try:
            if scope["path"] != "/v1/messages" or scope["method"] != "POST":
                raise Invalid("Not Found", 404, "not_found_error")
            bearer = headers.get("authorization", "")
            key = headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else "")
            if not key:
                raise Invalid("x-api-key header is required", 401, "authentication_error")
            if key != self.api_key:
                raise Invalid("invalid x-api-key", 401, "authentication_error")
            if "anthropic-version" not in headers:
                raise Invalid("anthropic-version: header is required")
            if headers["anthropic-version"] not in API_VERSIONS:
                raise Invalid(f"anthropic-version: invalid version '{headers['anthropic-version']}'")
            try:
                body = json.loads(raw)
            except ValueError:
                raise Invalid("There was an error parsing the body of your request.") from None
            record.body = body
            snapshot = self._validate(body)
        except Invalid as exc:
            record.status = exc.status
            return await _json(send, exc.status, error_body(exc.type, exc.message))
        reply = self._script.popleft() if self._script else Reply()
        if reply.status >= 400:
            record.status = reply.status
            type_ = reply.error_type or ERROR_TYPES.get(reply.status, "api_error")
            message = reply.message or DEFAULT_ERROR_MESSAGES.get(reply.status, "Internal server error")
            headers_out = dict(reply.headers)
            if reply.status == 429 and "retry-after" not in headers_out:
                headers_out["retry-after"] = "17"
            return await _json(send, reply.status, error_body(type_, message), headers_out)
        record.status = 200
        message = self._answer(body, snapshot, reply)
        if body.get("stream"):
            await self._stream(send, message, reply)
        else:
            await _json(send, 200, message, reply.headers)

    # --- validation ------------------------------------------------------------------------------------

    def _validate(self, body: Any) -> str:
        if not isinstance(body, dict):
            raise Invalid("Input should be an object")
        for key in body:
            if key not in ACCEPTED_PARAMS:
                raise Invalid(f"{key}: Extra inputs are not permitted")
        for key in ("model", "messages", "max_tokens"):
            if key not in body:
                raise Invalid(f"{key}: Field required")
        model = body["model"]
        if not isinstance(model, str) or not model:
            raise Invalid("model: Input should be a valid string")
        snapshot = self.models.get(model, model)
        if snapshot not in self.models.values():
            raise Invalid(f"model: {model}", 404, "not_found_error")
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise Invalid("max_tokens: Input should be greater than or equal to 1")
        limit = next((n for prefix, n in MAX_OUTPUT if snapshot.startswith(prefix)), 4096)
        if max_tokens > limit:
            raise Invalid(
                f"max_tokens: {max_tokens} > {limit}, which is the maximum allowed number of output "
                f"tokens for {snapshot}"
            )
        for key in ("temperature", "top_p"):
            value = body.get(key)
            if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
                raise Invalid(f"{key}: Input should be less than or equal to 1")
        if "top_k" in body and (not isinstance(body["top_k"], int) or body["top_k"] < 0):
            raise Invalid("top_k: Input should be greater than or equal to 0")
        stops = body.get("stop_sequences")
        if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
            raise Invalid("stop_sequences: Input should be a valid list of strings")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise Invalid("stream: Input should be a valid boolean")
        metadata = body.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise Invalid("metadata: Input should be a valid dictionary")
            for key in metadata:
                if key != "user_id":
                    raise Invalid(f"metadata.{key}: Extra inputs are not permitted")
            user_id = metadata.get("user_id")
            if user_id is not None and (not isinstance(user_id, str) or len(user_id) > 256):
                raise Invalid("metadata.user_id: String should have at most 256 characters")
        # ``system`` is "string or array of TextBlockParam" -- a list of {"type": "text", "text", cache_control?,
        # citations?} -- per the "Create a Message" reference, as typed by the installed SDK
        # (``MessageCreateParamsBase.system: Union[str, Iterable[TextBlockParam]]``; search tool, docs corpus:
        # stored copies of the reference such as langdb_clust's ``SystemPrompt`` "either a simple string or an
        # array of content blocks with cache control"). Each block is checked like a message's text block.
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            if not isinstance(system, list):
                raise Invalid("system: Input should be a valid string or list")
            for i, block in enumerate(system):
                _check_block(block, f"system.{i}", ("text",))
        self._validate_tools(body)
        self._validate_thinking(body, max_tokens)
        self._validate_messages(body["messages"])
        return snapshot

    def _validate_tools(self, body: dict) -> None:
        names: set[str] = set()
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise Invalid("tools: Input should be a valid list")
            for i, tool in enumerate(tools):
                if not isinstance(tool, dict):
                    raise Invalid(f"tools.{i}: Input should be a valid dictionary")
                for key in tool:
                    if key not in ("name", "description", "input_schema", "cache_control", "type", "strict"):
                        raise Invalid(f"tools.{i}.custom.{key}: Extra inputs are not permitted")
                name = tool.get("name")
                if not isinstance(name, str) or not TOOL_NAME.match(name):
                    raise Invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
                schema = tool.get("input_schema")
                if not isinstance(schema, dict):
                    raise Invalid(f"tools.{i}.custom.input_schema: Field required")
                if schema.get("type") != "object":
                    raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
                if name in names:
                    raise Invalid("tools: Tool names must be unique.")
                names.add(name)
        choice = body.get("tool_choice")
        if choice is not None:
            if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
                raise Invalid(
                    "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
                )
            allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if choice["type"] == "tool" else set())
            if choice["type"] == "none":
                allowed = {"type"}
            for key in choice:
                if key not in allowed:
                    raise Invalid(f"tool_choice.{choice['type']}.{key}: Extra inputs are not permitted")
            if choice["type"] == "tool" and choice.get("name") not in names:
                raise Invalid(f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in provided tools")

    def _validate_thinking(self, body: dict, max_tokens: int) -> None:
        thinking = body.get("thinking")
        if thinking is None:
            return
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise Invalid("thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'")
        if thinking["type"] == "disabled":
            return
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if max_tokens <= budget:
            raise Invalid(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                "#max-tokens-and-context-window-size"
            )
        if body.get("temperature") not in (None, 1):
            raise Invalid(
                "`temperature` may only be set to 1 when thinking is enabled. Please consult our "
                "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                "#feature-compatibility"
            )
        if "top_k" in body:
            raise Invalid("`top_k` must be unset when thinking is enabled.")
        if body.get("top_p") is not None and body["top_p"] < 0.95:
            raise Invalid("`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled.")
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
            raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")

    def _validate_messages(self, messages: Any) -> None:
        if not isinstance(messages, list):
            raise Invalid("messages: Input should be a valid list")
        if not messages:
            raise Invalid("messages: at least one message is required")
        turns: list[tuple[str, list[dict]]] = []  # merged consecutive turns, as the API combines them
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise Invalid(f"messages.{i}: Input should be a valid dictionary")
            for key in message:
                if key not in ("role", "content"):
                    raise Invalid(f"messages.{i}.{key}: Extra inputs are not permitted")
            role = message.get("role")
            if role not in ("user", "assistant"):
                raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if "content" not in message:
                raise Invalid(f"messages.{i}.content: Field required")
            content = message["content"]
            if isinstance(content, str):
                if not content and not (role == "assistant" and i == len(messages) - 1):
                    raise Invalid(
                        f"messages.{i}: all messages must have non-empty content except for the "
                        "optional final assistant message"
                    )
                blocks = [{"type": "text", "text": content}] if content else []
            elif isinstance(content, list):
                if not content and not (role == "assistant" and i == len(messages) - 1):
                    raise Invalid(
                        f"messages.{i}: all messages must have non-empty content except for the "
                        "optional final assistant message"
                    )
                kinds = (
                    ("text", "image", "document", "tool_result")
                    if role == "user"
                    else ("text", "tool_use", "thinking", "redacted_thinking")
                )
                for j, block in enumerate(content):
                    _check_block(block, f"messages.{i}.content.{j}", kinds)
                blocks = content
            else:
                raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
            if turns and turns[-1][0] == role:
                turns[-1][1].extend(blocks)
            else:
                turns.append((role, list(blocks)))
        if turns[0][0] != "user":
            raise Invalid('messages: first message must use the "user" role')
        seen_ids: set[str] = set()
        for t, (role, blocks) in enumerate(turns):
            if role == "assistant":
                ids = [b["id"] for b in blocks if b.get("type") == "tool_use"]
                for tool_id in ids:
                    if tool_id in seen_ids:
                        raise Invalid("messages: `tool_use` ids must be unique")
                    seen_ids.add(tool_id)
                if ids:
                    answered = set()
                    if t + 1 < len(turns):
                        answered = {b.get("tool_use_id") for b in turns[t + 1][1] if b.get("type") == "tool_result"}
                    missing = [x for x in ids if x not in answered]
                    if missing:
                        raise Invalid(
                            f"messages.{t + 1}: `tool_use` ids were found without `tool_result` blocks "
                            f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                            "corresponding `tool_result` block in the next message."
                        )
            else:
                previous = {b.get("id") for b in turns[t - 1][1] if b.get("type") == "tool_use"} if t else set()
                text_seen = False
                for j, block in enumerate(blocks):
                    if block.get("type") == "tool_result":
                        if text_seen:
                            raise Invalid(
                                f"messages.{t}: `tool_result` blocks must come first in the content "
                                "array, before any other content."
                            )
                        if block.get("tool_use_id") not in previous:
                            raise Invalid(
                                f"messages.{t}.content.{j}: unexpected `tool_use_id` found in "
                                f"`tool_result` blocks: {block.get('tool_use_id')}. Each `tool_result` "
                                "block must have a corresponding `tool_use` block in the previous "
                                "message."
                            )
                    else:
                        text_seen = True
        role, blocks = turns[-1]
        if role == "assistant" and blocks and blocks[-1].get("type") == "text":
            if blocks[-1]["text"] != blocks[-1]["text"].rstrip():
                raise Invalid("messages: final assistant content cannot end with trailing whitespace")

    # --- answers ---------------------------------------------------------------------------------------

    def _answer(self, body: dict, snapshot: str, reply: Reply) -> dict[str, Any]:
        blocks = reply.blocks if reply.blocks is not None else self._default_blocks(body)
        content: list[dict[str, Any]] = []
        for block in blocks:
            if isinstance(block, Text):
                content.append({"type": "text", "text": block.text})
            elif isinstance(block, Thinking):
                content.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
            else:
                tool_id = block.id or f"toolu_01{next(self._ids):022d}"
                content.append({"type": "tool_use", "id": tool_id, "name": block.name, "input": block.input})
        stop_reason = reply.stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn")
        usage = {
            "input_tokens": max(1, len(json.dumps(body["messages"])) // 4),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": max(1, len(json.dumps(content)) // 4),
        }
        if reply.usage:
            usage.update(reply.usage)
        return {
            "id": f"msg_01{next(self._ids):022d}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or snapshot,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": usage,
        }

    @staticmethod
    def _default_blocks(body: dict) -> list[Block]:
        choice = body.get("tool_choice") or {}
        if choice.get("type") == "tool":
            tool = next(t for t in body["tools"] if t["name"] == choice["name"])
            return [ToolUse(tool["name"], example_of(tool["input_schema"]))]
        last = body["messages"][-1]["content"]
        if isinstance(last, list):
            last = " ".join(b.get("text", "") for b in last if b.get("type") == "text")
        return [Text(f"You said: {last}")]

    async def _stream(self, send: Any, message: dict[str, Any], reply: Reply) -> None:
        events = list(stream_events(message))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"request-id", b"req_011CSHoEeqs5C35K2UUqR7Fy"),
                ],
            }
        )
        for n, (name, data) in enumerate(events):
            if n and reply.event_delay_s:
                await asyncio.sleep(reply.event_delay_s)
            if reply.error_after is not None and n == reply.error_after:
                error = error_body(
                    reply.stream_error,
                    DEFAULT_ERROR_MESSAGES[529]
                    if reply.stream_error == "overloaded_error"
                    else "Internal server error",
                )
                del error["request_id"]
                await send({"type": "http.response.body", "body": sse("error", error), "more_body": True})
                break
            if reply.cut_after is not None and n == reply.cut_after:
                break
            await send({"type": "http.response.body", "body": sse(name, data), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def stream_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Answer the (event, data) sequence the real API streams for ``message``."""
    start = dict(
        message, content=[], stop_reason=None, stop_sequence=None, usage=dict(message["usage"], output_tokens=1)
    )
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            head = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
        elif block["type"] == "thinking":
            head = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": piece} for piece in _pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            text = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                {"type": "input_json_delta", "partial_json": text[i : i + 9]} for i in range(0, len(text), 9)
            ]
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": head}))
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _pieces(text: str) -> list[str]:
    words = re.findall(r"\s*\S+|\s+", text)
    return ["".join(words[i : i + 2]) for i in range(0, len(words), 2)] or [text]


def example_of(schema: Any) -> Any:
    """Answer a minimal instance of a (simple) JSON schema: what a model's forced tool call could contain."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties", {})
        return {key: example_of(props[key]) for key in schema.get("required", list(props)) if key in props}
    if kind == "array":
        return [example_of(schema.get("items", {}))] * max(schema.get("minItems", 1), 1)
    return {"string": "example", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "example")


def _check_block(block: Any, where: str, kinds: tuple[str, ...]) -> None:
    if not isinstance(block, dict):
        raise Invalid(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    if kind not in kinds:
        raise Invalid(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
            + ", ".join(f"'{k}'" for k in kinds)
        )
    allowed = {
        "text": {"type", "text", "cache_control", "citations"},
        "image": {"type", "source", "cache_control"},
        "document": {"type", "source", "title", "context", "citations", "cache_control"},
        "tool_use": {"type", "id", "name", "input", "cache_control"},
        "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
        "thinking": {"type", "thinking", "signature"},
        "redacted_thinking": {"type", "data"},
    }[kind]
    for key in block:
        if key not in allowed:
            raise Invalid(f"{where}.{kind}.{key}: Extra inputs are not permitted")
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"].strip():
            raise Invalid("messages: text content blocks must contain non-whitespace text")
    elif kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in IMAGE_TYPES:
                raise Invalid(
                    f"{where}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                    "'image/gif' or 'image/webp'"
                )
            _check_base64(source.get("data"), f"{where}.image.source.base64.data")
        elif source.get("type") == "url":
            if not str(source.get("url", "")).startswith(("http://", "https://")):
                raise Invalid(f"{where}.image.source.url.url: invalid URL")
        else:
            raise Invalid(f"{where}.image.source: Input tag does not match any of the expected tags: 'base64', 'url'")
    elif kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") != "application/pdf":
                raise Invalid(f"{where}.document.source.base64.media_type: Input should be 'application/pdf'")
            _check_base64(source.get("data"), f"{where}.document.source.base64.data")
        elif source.get("type") == "text":
            if source.get("media_type") != "text/plain" or not isinstance(source.get("data"), str):
                raise Invalid(f"{where}.document.source.text: invalid plain-text source")
        elif source.get("type") != "url":
            raise Invalid(f"{where}.document.source: Input tag does not match any of the expected tags")
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise Invalid(f"{where}.tool_use.id: Field required")
        if not isinstance(block.get("input"), dict):
            raise Invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise Invalid(f"{where}.tool_result.tool_use_id: Field required")
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise Invalid(f"{where}.tool_result.content: Input should be a valid string or list")
    elif kind == "thinking":
        if not isinstance(block.get("signature"), str):
            raise Invalid(f"{where}.thinking.signature: Field required")


def _check_base64(data: Any, where: str) -> None:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise Invalid(f"{where}: invalid base64 data") from None


async def _json(send: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"request-id", b"req_011CSHoEeqs5C35K2UUqR7Fy"),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
