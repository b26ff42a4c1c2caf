"""A strict fake of OpenAI's Chat Completions and Embeddings APIs, as a pure ASGI app, for end-to-end tests.

Serve it with ``tests.servers.serve(FakeOpenAI(...))``; point a provider at ``<url>/v1``.

It is as strict as OpenAI where mux could get things wrong: ``Authorization: Bearer <key>`` or a 401, a JSON
body or a 400, unknown top-level parameters refused with OpenAI's "Unrecognized request argument supplied",
``model`` and a non-empty ``messages`` required, roles and tool-message pairing checked, unknown models 404.
It records every request (headers and parsed body) and can be scripted per request (``FakeOpenAI.script``)
to fail in the ways real upstreams fail: an error status with OpenAI's body and headers, a stall before the
first byte or mid-stream, a stream cut after K chunks, an in-band error event, a 200 with an empty or HTML body.

Wire format, from the OpenAI API reference (looked up with the search tool, docs corpus; cross-checked with the
installed ``openai`` SDK's ``types/chat`` models):
- "The chat completion object": id, object "chat.completion", created, model, choices[{index,
  message{role, content, refusal, annotations[, tool_calls]}, logprobs, finish_reason}], usage{prompt_tokens,
  completion_tokens, total_tokens, prompt_tokens_details, completion_tokens_details}, service_tier,
  system_fingerprint (openai-client-base docs "CreateChatCompletionResponse", langchain's typed copy
  "OpenAIClient.Chat.Completions.ChatCompletion").
- "The chat completion chunk object": object "chat.completion.chunk", "Each chunk has the same ID" and
  "the same timestamp"; ``choices`` "can also be empty for the last chunk if you set stream_options:
  {"include_usage": true}" (openai-client-base "CreateChatCompletionStreamResponse").
- ``stream_options.include_usage``: "an additional chunk will be streamed before the data: [DONE] message. The
  usage field on this chunk shows the token usage statistics for the entire request, and the choices field
  will always be an empty array. All other chunks will also include a usage field, but with a null value"
  (OpenAPI ChatCompletionStreamOptions, as quoted by openai-struct and openai-ruby's docs).
- Streamed tool calls: the id and function name arrive in the first delta of each call, the JSON arguments
  accrete in later deltas, reassembled by ``index`` (ChatChunkChoice JSON example; daslang's OpenAI tutorial).
- Errors: ``{"error": {"message", "type", "param", "code"}}``; a bad key is HTTP 401 ``invalid_request_error``
  / ``invalid_api_key`` ("Incorrect API key provided: sk-abc***", help.openai.com article 6891781 and
  benchr's error page); an unknown argument is a 400 "Unrecognized request argument supplied: X" (seen
  verbatim in public issue reports, e.g. formulahendry/wechat-acp#16).
- Parameters accepted: the documented request body of "Create chat completion" (the list below, which
  includes recent ones such as ``prompt_cache_retention`` — openai/openai-python commit f9d2d13 — and
  ``web_search_options``, which mux's request view does not model).
- ``finish_reason``: "stop if the model hit a natural stop point or a provided stop sequence, length if the maximum
  number of tokens specified in the request was reached" (the ``finish_reason`` description of the OpenAPI spec, as
  copied by openai-struct and the SDKs' typed models). The fake honours both for text answers: the answer is cut
  before the first ``stop`` sequence it contains (the sequence itself is not returned), and to ``max_completion_tokens``
  (else ``max_tokens``) of its pieces with finish_reason "length".
- ``Reply(reasoning=...)`` stands in for OpenAI-compatible servers that return reasoning text, which OpenAI itself
  never does in Chat Completions: Groq's reasoning models answer it in "a dedicated message.reasoning field"
  (Groq docs "Reasoning", ``reasoning_format: parsed`` / ``include_reasoning: true``, the default), streamed as
  ``delta.reasoning`` before the content.
- Embeddings (``POST /v1/embeddings``), from the OpenAI API reference "Create embeddings" and "The embedding
  object" (search tool, docs corpus: developers.openai.com/api/reference/go/resources/embeddings; the OpenAPI
  ``CreateEmbeddingRequest`` as copied by openai-struct, ``additionalProperties: false``; the installed SDK's
  ``EmbeddingCreateParams``): the body takes only ``input``, ``model``, ``dimensions``, ``encoding_format`` and
  ``user``; ``input`` is a string or an array of strings, of token ids or of token-id arrays, "cannot be an empty
  string, and any array must be 2048 dimensions or less"; ``dimensions`` is "Only supported in text-embedding-3
  and later models"; ``encoding_format`` is ``float`` or ``base64``. The answer is ``{"object": "list", "data":
  [{"object": "embedding", "index", "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}``. An
  invalid input is refused with "'$.input' is invalid. Please check the API reference: ..." and param/code null
  (verbatim in aryn-ai/sycamore#943, openai/openai-python#576); ``dimensions`` on ada-002 with "This model does
  not support specifying dimensions." (SciPhi-AI/R2R#768, sbintuitions/JMTEB#14). base64 vectors are the
  little-endian float32 bytes the SDK decodes (``openai/lib/_parsing/_embeddings.py``: ``array("f", ...)``).
- Reasoning models (``REASONING_MODELS``: the o-series and gpt-5 family) refuse ``max_tokens`` and any
  ``temperature``/``top_p`` but the default 1, with the bodies quoted at ``_reasoning_model_problem``.
Messages of validation errors follow OpenAI's wording where known; elsewhere they are close paraphrases.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from mux.asgi import answer_lifespan

# The documented top-level parameters of POST /v1/chat/completions. Anything else is refused with a 400.
ACCEPTED_PARAMS = frozenset(
    {
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
# The documented request body of POST /v1/embeddings ("Create embeddings"); anything else is refused with a 400.
EMBEDDING_PARAMS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})
# Embedding model -> the length of its vectors (OpenAI's embeddings guide: 1536 for text-embedding-3-small and
# ada-002, 3072 for text-embedding-3-large). Only text-embedding-3 models take ``dimensions``.
EMBEDDING_MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
MAX_EMBEDDING_INPUTS = 2048
_INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."

# Groq's accepted message properties per role (groq/groq-python ``types/chat/chat_completion_*_message_param.py``,
# generated from Groq's OpenAPI spec). Groq refuses any other property with "'messages.N' : for 'role:assistant' the
# following must be satisfied[('messages.N' : property 'annotations' is unsupported)]", verbatim in many public
# reports of clients echoing an OpenAI SDK message back (``model_dump()`` keeps ``annotations``; e.g.
# run-llama/llama_index#14701 for 'status', SimonSchubert/Kai#265 for 'reasoning_content'). Give it to
# ``FakeOpenAI(message_fields=...)`` to make the fake stand in for Groq.
GROQ_MESSAGE_FIELDS = {
    "system": frozenset({"role", "content", "name", "tool_call_id"}),
    "user": frozenset({"role", "content", "name", "tool_call_id"}),
    "assistant": frozenset({"role", "content", "name", "function_call", "reasoning", "tool_calls"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}

# Requested model -> the dated snapshot OpenAI answers with (real responses name the snapshot).
DEFAULT_MODELS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
}
# Models whose API takes ``max_completion_tokens`` and only the default sampling (see _reasoning_model_problem).
REASONING_MODELS = frozenset({"o1", "o1-mini", "o3", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"})
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")

_FINGERPRINT = "fp_f0a1b2c3d4"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CALL_MARK = re.compile(r"call:([a-zA-Z0-9_-]{1,64})")
_PIECES = re.compile(r"\s*\S+|\s+")


class _Disconnected(Exception):
    """The client went away while the fake was waiting or sending."""


@dataclass
class Reply:
    """How the fake answers one request that passed its validation. Defaults: a normal, prompt answer.

    - ``status`` >= 400: an OpenAI error body (``error`` overrides the error object) with ``headers``.
    - ``body``: sent verbatim with ``status`` and ``content_type`` (e.g. b"" or an HTML page), stream or not.
    - ``stall_s``: wait this long before the response starts (ends early if the client disconnects).
    - ``content`` / ``usage`` / ``model``: override the answer's text, usage object or answered model.
    - ``reasoning``: the answer's reasoning text, as ``message.reasoning`` / ``delta.reasoning`` (Groq-style).
    - Streams: ``chunk_delay_s`` between chunks; ``cut_after=K`` stops after K data events without ``[DONE]``,
      either ending the response (``cut_mode="eof"``) or dropping the connection mid-body (``"reset"``);
      ``error_event`` is sent as ``data: {"error": ...}`` after ``error_after`` chunks, then the stream ends;
      ``idle_after=K`` pauses ``idle_s`` after K chunks.
    """

    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str = "application/json"
    stall_s: float = 0.0
    content: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    reasoning: str | None = None
    chunk_delay_s: float = 0.0
    cut_after: int | None = None
    cut_mode: Literal["eof", "reset"] = "eof"
    error_event: dict[str, Any] | None = None
    error_after: int = 1
    idle_after: int | None = None
    idle_s: float = 0.0


@dataclass
class Recorded:
    """One request the fake received, and what became of it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    raw_headers: list[tuple[str, str]]
    raw_body: bytes
    body: Any = None  # parsed JSON, when it parsed
    status: int | None = None  # the status the fake answered
    chunks_sent: int = 0  # stream data events sent ([DONE] not counted)
    completed: bool = False  # the response was sent to its normal end
    disconnected_at: float | None = None  # time.monotonic() when the client went away before the end
    received_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)  # the handler has returned


def error_object(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


# Realistic error objects (and headers) per status, as OpenAI (or the edge in front of it) sends them.
def default_error(status: int, model: str = "gpt-4o-mini") -> tuple[dict[str, Any], dict[str, str]]:
    if status == 400:
        return error_object("Invalid request."), {}
    if status == 401:
        return error_object(
            "Incorrect API key provided: sk-fake***abcd. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        ), {}
    if status == 403:
        return error_object(
            "Country, region, or territory not supported",
            "request_forbidden",
            code="unsupported_country_region_territory",
        ), {}
    if status == 404:
        return error_object(
            f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
        ), {}
    if status == 429:
        return error_object(
            f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 3, "
            "Used 3, Requested 1. Please try again in 20s.",
            "requests",
            code="rate_limit_exceeded",
        ), {
            "retry-after": "20",
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "20s",
        }
    if status == 500:
        return error_object(
            "The server had an error while processing your request. Sorry about that!", "server_error"
        ), {}
    if status == 503:
        return error_object("The engine is currently overloaded, please try again later.", "server_error"), {}
    return error_object(f"Upstream failure (HTTP {status}).", "server_error"), {}


class FakeOpenAI:
    """The fake upstream. Thread-safe enough for tests: it runs on the server thread, tests read from theirs."""

    def __init__(
        self,
        *,
        api_key: str = "sk-fake-upstream-key-abcd",
        models: dict[str, str] | None = None,
        embedding_models: dict[str, int] | None = None,
        message_fields: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self.api_key = api_key
        self.message_fields = message_fields  # role -> accepted message properties (None: not checked)
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.embedding_models = dict(EMBEDDING_MODELS if embedding_models is None else embedding_models)
        self.url = ""  # set by whoever serves it
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._ids = 0

    # --- the test-facing API ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def reset(self) -> None:
        """Forget the records and any unused script (call before each test)."""
        self.requests = []
        self._script.clear()

    def script(self, *replies: Reply) -> None:
        """Queue replies; each valid chat or embeddings request takes the next one, then the fake answers
        normally."""
        self._script.extend(replies)

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    @property
    def embedding_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/embeddings"]

    @property
    def last(self) -> Recorded:
        return self.chat_requests[-1]

    def wait_done(self, record: Recorded, timeout: float = 5.0) -> bool:
        """Wait until the handler of ``record`` has returned."""
        return record.done.wait(timeout)

    # --- ASGI ----------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw_headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        record = Recorded(
            method=scope["method"],
            path=scope["path"],
            headers=dict(raw_headers),
            raw_headers=raw_headers,
            raw_body=b"".join(chunks),
        )
        self.requests.append(record)
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not record.completed:
                        record.disconnected_at = time.monotonic()
                    gone.set()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await self._handle(record, _Sender(send, record, gone))
        except _Disconnected:
            pass
        finally:
            watcher.cancel()
            record.done.set()

    async def _handle(self, record: Recorded, out: _Sender) -> None:
        if record.path == "/v1/models" and record.method == "GET":
            if not await self._authorized(record, out):
                return
            data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in self.models]
            return await out.json(200, {"object": "list", "data": data})
        if record.path not in ("/v1/chat/completions", "/v1/embeddings") or record.method != "POST":
            return await out.error(404, error_object(f"Invalid URL ({record.method} {record.path})"))
        if not await self._authorized(record, out):
            return
        content_type = record.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return await out.error(
                400,
                error_object(
                    "Invalid Content-Type header ({}), expected application/json.".format(content_type or "none")
                ),
            )
        try:
            body = json.loads(record.raw_body)
        except ValueError:
            return await out.error(
                400,
                error_object(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
                    "JSON.)"
                ),
            )
        record.body = body
        embeddings = record.path == "/v1/embeddings"
        problem = validate_embeddings(body, self.embedding_models) if embeddings else validate(body, self.models)
        if problem is None and not embeddings and self.message_fields is not None:
            problem = _unsupported_message_property(body["messages"], self.message_fields)
        if problem is not None:
            status, error = problem
            return await out.error(status, error)
        reply = self._script.popleft() if self._script else Reply()
        if embeddings:
            return await self._embed(body, reply, out)
        await self._answer(body, reply, out)

    async def _authorized(self, record: Recorded, out: _Sender) -> bool:
        auth = record.headers.get("authorization")
        if auth is None:
            await out.error(
                401,
                error_object(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    code="invalid_api_key",
                ),
            )
            return False
        if auth != "Bearer " + self.api_key:
            given = auth[7:] if auth.startswith("Bearer ") else auth
            masked = (given[:3] + "*" * 3 + given[-4:]) if len(given) > 8 else "***"
            await out.error(
                401,
                error_object(
                    f"Incorrect API key provided: {masked}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                ),
            )
            return False
        return True

    # --- answers ---------------------------------------------------------------------------------------------

    async def _embed(self, body: dict, reply: Reply, out: _Sender) -> None:
        """Answer an embedding list: one deterministic vector per input (``embedding_vector``)."""
        if reply.stall_s:
            await out.pause(reply.stall_s)
        if reply.body is not None:
            return await out.raw(reply.status, reply.body, reply.content_type, reply.headers)
        requested = body["model"]
        if reply.status >= 400:
            error, headers = default_error(reply.status, requested)
            return await out.error(reply.status, reply.error or error, {**headers, **reply.headers})
        dimensions = body.get("dimensions") or self.embedding_models[requested]
        base64_wanted = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(embedding_inputs(body["input"])):
            vector = embedding_vector(item, dimensions)
            data.append(
                {"object": "embedding", "index": index, "embedding": pack_float32(vector) if base64_wanted else vector}
            )
        tokens = sum(embedding_tokens(item) for item in embedding_inputs(body["input"]))
        usage = reply.usage or {"prompt_tokens": tokens, "total_tokens": tokens}
        await out.json(
            200, {"object": "list", "data": data, "model": reply.model or requested, "usage": usage}, reply.headers
        )

    async def _answer(self, body: dict, reply: Reply, out: _Sender) -> None:
        if reply.stall_s:
            await out.pause(reply.stall_s)
        if reply.body is not None:
            return await out.raw(reply.status, reply.body, reply.content_type, reply.headers)
        requested = body["model"]
        if reply.status >= 400:
            error, headers = default_error(reply.status, requested)
            return await out.error(reply.status, reply.error or error, {**headers, **reply.headers})
        self._ids += 1
        answer = plan_answer(body, self._ids)
        if reply.content is not None:
            answer.content, answer.tool_calls = reply.content, []
        answer.reasoning = reply.reasoning
        answer.limit(body)
        model = reply.model or self.models[requested]
        completion_id = f"chatcmpl-Fake{self._ids:020d}"
        created = int(time.time())
        n = body.get("n") or 1
        usage = reply.usage or answer.usage(body, n)
        if body.get("stream"):
            return await self._stream(body, reply, out, answer, model, completion_id, created, n, usage)
        message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None, "annotations": []}
        if answer.reasoning is not None:
            message["reasoning"] = answer.reasoning
        if answer.tool_calls:
            message["content"] = None
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in answer.tool_calls
            ]
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}
                for i in range(n)
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        await out.json(200, completion, reply.headers, indent=2)

    async def _stream(
        self,
        body: dict,
        reply: Reply,
        out: _Sender,
        answer: Answer,
        model: str,
        completion_id: str,
        created: int,
        n: int,
        usage: dict,
    ) -> None:
        options = body.get("stream_options") or {}
        include_usage = options.get("include_usage") is True
        obfuscate = options.get("include_obfuscation") is not False

        def chunk(choices: list[dict], **extra: Any) -> dict:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                data["usage"] = None
            data.update(extra)
            if obfuscate and choices:
                data["obfuscation"] = "x" * (4 + len(json.dumps(choices)) % 7)
            return data

        def each(delta: dict, finish: str | None = None) -> list[dict]:
            return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish} for i in range(n)]

        events: list[dict] = []
        if answer.tool_calls:
            for position, call in enumerate(answer.tool_calls):
                head = {
                    "index": position,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": ""},
                }
                if position == 0:
                    events.append(
                        chunk(each({"role": "assistant", "content": None, "tool_calls": [head], "refusal": None}))
                    )
                else:
                    events.append(chunk(each({"tool_calls": [head]})))
                arguments = call["arguments"]
                for start in range(0, len(arguments), 8):
                    events.append(
                        chunk(
                            each(
                                {
                                    "tool_calls": [
                                        {"index": position, "function": {"arguments": arguments[start : start + 8]}}
                                    ]
                                }
                            )
                        )
                    )
        else:
            events.append(chunk(each({"role": "assistant", "content": "", "refusal": None})))
            for piece in _PIECES.findall(answer.reasoning or ""):
                events.append(chunk(each({"reasoning": piece})))
            for piece in _PIECES.findall(answer.content):
                events.append(chunk(each({"content": piece})))
        events.append(chunk(each({}, answer.finish_reason)))
        if include_usage:
            events.append(chunk([], usage=usage))

        await out.start(200, "text/event-stream; charset=utf-8", reply.headers)
        for sent, event in enumerate(events):
            if sent and reply.chunk_delay_s:
                await out.pause(reply.chunk_delay_s)
            if reply.idle_after is not None and sent == reply.idle_after:
                await out.pause(reply.idle_s)
            if reply.cut_after is not None and sent >= reply.cut_after:
                if reply.cut_mode == "reset":
                    return  # uvicorn drops the connection: the chunked body never ends
                return await out.end()
            if reply.error_event is not None and sent >= reply.error_after:
                await out.event({"error": reply.error_event})
                return await out.end()
            await out.event(event)
        await out.body(b"data: [DONE]\n\n", more=False)


class _Sender:
    """``send`` with the fake's framing, bookkeeping and disconnect-aware pauses."""

    def __init__(self, send: Any, record: Recorded, gone: asyncio.Event) -> None:
        self._send = send
        self._record = record
        self._gone = gone

    async def pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._gone.wait(), seconds)
        except TimeoutError:
            return
        raise _Disconnected

    async def start(self, status: int, content_type: str, headers: dict[str, str] | None = None) -> None:
        if self._gone.is_set():
            raise _Disconnected
        self._record.status = status
        pairs = [
            (b"content-type", content_type.encode()),
            (b"x-request-id", b"req_fake0123456789"),
            (b"openai-version", b"2020-10-01"),
            (b"openai-processing-ms", b"12"),
        ]
        pairs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await self._send({"type": "http.response.start", "status": status, "headers": pairs})

    async def body(self, data: bytes, more: bool = True) -> None:
        if self._gone.is_set():
            raise _Disconnected
        await self._send({"type": "http.response.body", "body": data, "more_body": more})
        if not more:
            self._record.completed = True

    async def end(self) -> None:
        await self.body(b"", more=False)

    async def event(self, payload: dict) -> None:
        await self.body(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")
        self._record.chunks_sent += 1

    async def raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str]) -> None:
        await self.start(status, content_type, {"content-length": str(len(data)), **headers})
        await self.body(data, more=False)

    async def json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, indent: int | None = None
    ) -> None:
        data = json.dumps(payload, indent=indent).encode()
        await self.raw(status, data, "application/json", headers or {})

    async def error(self, status: int, error: dict, headers: dict[str, str] | None = None) -> None:
        await self.json(status, {"error": error}, headers)


# --- validation ----------------------------------------------------------------------------------------------


def _validate_envelope(body: Any, accepted: frozenset[str]) -> tuple[int, dict] | None:
    """What every endpoint checks first: a JSON object, only documented parameters, a string ``model``."""
    if not isinstance(body, dict):
        return 400, error_object("Invalid type for request body: expected an object.", code="invalid_type")
    for key in body:
        if key not in accepted:
            return 400, error_object(f"Unrecognized request argument supplied: {key}", param=key)
    model = body.get("model")
    if model is None:
        return 400, error_object("you must provide a model parameter")
    if not isinstance(model, str):
        return 400, error_object("Invalid type for 'model': expected a string.", param="model", code="invalid_type")
    return None


def validate(body: Any, models: dict[str, str]) -> tuple[int, dict] | None:
    """Answer ``(status, error object)`` for a request OpenAI would refuse, else ``None``."""
    problem = _validate_envelope(body, ACCEPTED_PARAMS)
    if problem is not None:
        return problem
    model = body["model"]
    if "messages" not in body:
        return 400, error_object(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        return 400, error_object(
            "Invalid type for 'messages': expected an array of objects.", param="messages", code="invalid_type"
        )
    if not messages:
        return 400, error_object(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    problem = _validate_messages(messages)
    if problem is not None:
        return 400, problem
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return 400, error_object("Invalid type for 'stream': expected a boolean.", param="stream", code="invalid_type")
    if body.get("stream_options") is not None and not stream:
        return 400, error_object(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        return 400, error_object("Invalid 'n': must be an integer between 1 and 128.", param="n", code="invalid_value")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
        return 400, error_object(
            f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but "
            f"got {temperature} instead.",
            param="temperature",
            code="decimal_above_max_value",
        )
    problem = _validate_tools(body)
    if problem is not None:
        return 400, problem
    problem = _validate_response_format(body)
    if problem is not None:
        return 400, problem
    if model not in models:
        return 404, error_object(
            f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
        )
    if _SNAPSHOT.sub("", model) in REASONING_MODELS:
        return _reasoning_model_problem(body)
    return None


def _reasoning_model_problem(body: dict) -> tuple[int, dict] | None:
    """What a reasoning model refuses, as the API words it (looked up with the search tool, issues corpus):
    - ``max_tokens``: the full error object, verbatim in griptape-ai/ComfyUI-Griptape#312 (gpt-5) and
      ITSpecialist111/ai_automation_suggester#38; the same message for o1 and o3-mini in teilomillet/gollm#33.
      The API reference calls ``max_tokens`` "deprecated in favor of max_completion_tokens, and is not
      compatible with o1 series models" (quoted in simonw/llm#724).
    - ``temperature`` other than 1: the full error object, verbatim in gabrii/Cursor-Azure-GPT-5#33 (value 0);
      "does not support 0.2" in holoviz/lumen#1087 and "0.0" for o1-mini in OpenHands/OpenHands#4131: the value
      is echoed as the client sent it.
    - ``top_p`` other than 1: the same message for 'top_p' ("does not support 0.9 with this model. Only the
      default (1) value is supported.", quoted in public client test suites found by exact string;
      huang-sh/GPTBioInsightor#4 reports o4-mini refusing it)."""
    if body.get("max_tokens") is not None:
        return 400, error_object(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and value != 1:
            return 400, error_object(
                f"Unsupported value: '{name}' does not support {json.dumps(value)} with this "
                "model. Only the default (1) value is supported.",
                param=name,
                code="unsupported_value",
            )
    return None


def validate_embeddings(body: Any, models: dict[str, int]) -> tuple[int, dict] | None:
    """Answer ``(status, error object)`` for an embeddings request OpenAI would refuse, else ``None``."""
    problem = _validate_envelope(body, EMBEDDING_PARAMS)
    if problem is not None:
        return problem
    model = body["model"]
    if "input" not in body:
        return 400, error_object(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if not _valid_embedding_input(body["input"]):
        return 400, error_object(_INVALID_INPUT)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        return 400, error_object(
            f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        return 400, error_object("Invalid type for 'user': expected a string.", param="user", code="invalid_type")
    if model not in models:
        return 404, error_object(
            f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not model.startswith("text-embedding-3"):
            return 400, error_object("This model does not support specifying dimensions.")
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            return 400, error_object(
                f"Invalid 'dimensions': expected an integer >= 1, but got {dimensions!r} instead.",
                param="dimensions",
                code="invalid_value",
            )
        if dimensions > models[model]:
            return 400, error_object(
                f"Invalid 'dimensions': integer above maximum value. Expected a value <= "
                f"{models[model]}, but got {dimensions} instead.",
                param="dimensions",
                code="integer_above_max_value",
            )
    return None


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid_embedding_input(value: Any) -> bool:
    """A non-empty string, or a non-empty array (at most 2048 items) of non-empty strings, of token ids or of
    non-empty token-id arrays, all items of one kind."""
    if isinstance(value, str):
        return value != ""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EMBEDDING_INPUTS:
        return False
    if all(isinstance(item, str) for item in value):
        return all(item != "" for item in value)
    if all(_token_id(item) for item in value):
        return True
    return all(isinstance(item, list) and item and all(_token_id(t) for t in item) for item in value)


def embedding_inputs(value: Any) -> list[Any]:
    """The inputs one vector each is answered for: a string or one token-id array is one input."""
    if isinstance(value, str) or (isinstance(value, list) and value and _token_id(value[0])):
        return [value]
    return list(value)


def embedding_tokens(item: Any) -> int:
    """The fake's token count of one input: token ids count themselves, text counts like chat content."""
    return len(item) if isinstance(item, list) else _count(item)


def embedding_vector(item: Any, dimensions: int) -> list[float]:
    """The deterministic vector of one input: values in [-1, 1) derived from SHA-256 of the input, each exactly
    representable as a float32 (so the float and base64 forms decode to the same numbers)."""
    seed = json.dumps(item, separators=(",", ":")).encode()
    values: list[float] = []
    block = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(seed + block.to_bytes(4, "little")).digest()
        for offset in range(0, len(digest), 2):
            raw = int.from_bytes(digest[offset : offset + 2], "little")
            values.append(struct.unpack("<f", struct.pack("<f", raw / 32768.0 - 1.0))[0])
        block += 1
    return values[:dimensions]


def pack_float32(vector: list[float]) -> str:
    """OpenAI's base64 form of a vector: its little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _validate_messages(messages: list) -> dict | None:
    pending: dict[str, str] = {}  # tool_call_id -> where it was asked, still unanswered
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            return error_object(f"Invalid type for '{where}': expected an object.", param=where, code="invalid_type")
        role = message.get("role")
        if role is None:
            return error_object(
                f"Missing required parameter: '{where}.role'.", param=f"{where}.role", code="missing_required_parameter"
            )
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"
            return error_object(
                f"Invalid value: '{role}'. Supported values are: {supported}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        if pending and role != "tool":
            missing = ", ".join(pending)
            return error_object(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {missing}",
                param="messages",
            )
        content = message.get("content")
        if role == "assistant":
            calls = message.get("tool_calls")
            if content is None and not calls and message.get("function_call") is None:
                return error_object(
                    f"Missing required parameter: '{where}.content'.",
                    param=f"{where}.content",
                    code="missing_required_parameter",
                )
            for position, call in enumerate(calls or []):
                if not isinstance(call, dict) or not call.get("id") or not isinstance(call.get("function"), dict):
                    return error_object(
                        f"Invalid '{where}.tool_calls[{position}]'.",
                        param=f"{where}.tool_calls[{position}]",
                        code="invalid_value",
                    )
                pending[call["id"]] = where
        elif content is None:
            return error_object(
                f"Missing required parameter: '{where}.content'.",
                param=f"{where}.content",
                code="missing_required_parameter",
            )
        elif not isinstance(content, (str, list)):
            return error_object(
                f"Invalid type for '{where}.content': expected one of a string or array of objects.",
                param=f"{where}.content",
                code="invalid_type",
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                return error_object(
                    f"Missing required parameter: '{where}.tool_call_id'.",
                    param=f"{where}.tool_call_id",
                    code="missing_required_parameter",
                )
            if call_id not in pending:
                return error_object(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    param=f"{where}.role",
                )
            del pending[call_id]
    if pending:
        missing = ", ".join(pending)
        return error_object(
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
            f"{missing}",
            param="messages",
        )
    return None


def _unsupported_message_property(messages: list[dict], fields: dict[str, frozenset[str]]) -> tuple[int, dict] | None:
    """Groq's refusal of a message property its schema does not have (``GROQ_MESSAGE_FIELDS``)."""
    for index, message in enumerate(messages):
        role = message["role"]
        for key in message:
            if key not in fields.get(role, frozenset()):
                return 400, {
                    "message": f"'messages.{index}' : for 'role:{role}' the following must be satisfied"
                    f"[('messages.{index}' : property '{key}' is unsupported)]",
                    "type": "invalid_request_error",
                }
    return None


def _validate_tools(body: dict) -> dict | None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return error_object("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or tool.get("type") not in ("function", "custom"):
                return error_object(f"Invalid value for '{where}.type'.", param=f"{where}.type", code="invalid_value")
            if tool["type"] == "function":
                function = tool.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                if not isinstance(name, str) or not _TOOL_NAME.match(name):
                    return error_object(
                        f"Invalid '{where}.function.name': string does not match pattern. "
                        "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                        param=f"{where}.function.name",
                        code="invalid_value",
                    )
                names.append(name)
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not tools:
        return error_object(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            return error_object(
                f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
                param="tool_choice",
                code="invalid_value",
            )
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            return error_object(
                f"Invalid value for 'tool_choice': function '{name}' is not among the 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
    return None


def _validate_response_format(body: dict) -> dict | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        return error_object(
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    if kind == "json_object" and "json" not in json.dumps(body["messages"]).lower():
        return error_object(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
            param="messages",
        )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not spec.get("name"):
            return error_object(
                "Missing required parameter: 'response_format.json_schema.name'.",
                param="response_format.json_schema.name",
                code="missing_required_parameter",
            )
        schema = spec.get("schema") or {}
        if spec.get("strict"):
            trouble = _strict_schema_problem(schema, ())
            if trouble:
                return error_object(
                    f"Invalid schema for response_format '{spec['name']}': {trouble}",
                    param="response_format",
                    code="invalid_json_schema",
                )
    return None


def _strict_schema_problem(schema: Any, context: tuple[str, ...]) -> str | None:
    """OpenAI's structured-outputs rules: every object closes ``additionalProperties`` and requires all keys."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [k for k in properties if k not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
        for key, sub in properties.items():
            trouble = _strict_schema_problem(sub, (*context, "properties", key))
            if trouble:
                return trouble
    if schema.get("type") == "array":
        return _strict_schema_problem(schema.get("items"), (*context, "items"))
    return None


# --- what the fake "model" says --------------------------------------------------------------------------------


@dataclass
class Answer:
    content: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {"id", "name", "arguments"}
    reasoning: str | None = None
    truncated: bool = False  # cut at the request's token limit

    @property
    def finish_reason(self) -> str:
        if self.tool_calls:
            return "tool_calls"
        return "length" if self.truncated else "stop"

    def limit(self, body: dict) -> None:
        """Apply the request's ``stop`` sequences and token limit to a text answer, as the model would: the text
        ends before the first stop sequence (not included), or after ``max_completion_tokens`` / ``max_tokens``
        pieces with finish_reason "length"."""
        if self.tool_calls:
            return
        stops = body.get("stop")
        stops = [stops] if isinstance(stops, str) else [s for s in stops or () if isinstance(s, str) and s]
        cuts = [self.content.find(s) for s in stops if s in self.content]
        if cuts:
            self.content = self.content[: min(cuts)]
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        pieces = _PIECES.findall(self.content)
        if isinstance(limit, int) and len(pieces) > limit:
            self.content, self.truncated = "".join(pieces[:limit]), True

    def usage(self, body: dict, n: int) -> dict[str, Any]:
        prompt = sum(4 + _count(m.get("content")) for m in body["messages"]) + 3
        if self.tool_calls:
            completion = sum(_count(c["name"]) + _count(c["arguments"]) for c in self.tool_calls)
        else:
            completion = len(_PIECES.findall(self.content))
        completion *= n
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def _count(content: Any) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text_of(content)))


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def plan_answer(body: dict, serial: int) -> Answer:
    """Decide the deterministic answer.

    - Tool calls: when ``tools`` are given and ``tool_choice`` is not "none", and either ``tool_choice`` is
      "required" (the first function is called) or names a function, or the last message is a user message
      containing ``call:<name>`` for tools it names (several marks give parallel calls, unless
      ``parallel_tool_calls`` is false). Arguments are a sample of the function's JSON schema (``sample``).
    - After a tool result (last message has role "tool"): ``Tool <name> returned: <content>``.
    - ``response_format`` json_object: ``{"echo": <last user text>}``; json_schema: a sample of the schema.
    - Otherwise: ``Echo: <last user text>``.
    """
    messages = body["messages"]
    last = messages[-1]
    tools = {t["function"]["name"]: t["function"] for t in body.get("tools") or [] if t.get("type") == "function"}
    choice = body.get("tool_choice")
    wanted: list[str] = []
    if tools and choice != "none" and last.get("role") != "tool":
        if choice == "required":
            wanted = [next(iter(tools))]
        elif isinstance(choice, dict) and choice.get("type") == "function":
            wanted = [choice["function"]["name"]]
        elif last.get("role") == "user":
            wanted = [name for name in _CALL_MARK.findall(text_of(last.get("content"))) if name in tools]
            if body.get("parallel_tool_calls") is False:
                wanted = wanted[:1]
    if wanted:
        calls = []
        for position, name in enumerate(wanted):
            arguments = sample(tools[name].get("parameters") or {"type": "object", "properties": {}})
            calls.append(
                {
                    "id": f"call_fake{serial:04d}x{position}",
                    "name": name,
                    "arguments": json.dumps(arguments, separators=(",", ":")),
                }
            )
        return Answer(tool_calls=calls)
    if last.get("role") == "tool":
        name = _tool_name_of(messages, last.get("tool_call_id"))
        return Answer(content=f"Tool {name} returned: {text_of(last.get('content'))}")
    user_text = next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        return Answer(content=json.dumps({"echo": user_text}))
    if fmt.get("type") == "json_schema":
        schema = fmt["json_schema"].get("schema") or {"type": "object", "properties": {}}
        return Answer(content=json.dumps(sample(schema)))
    return Answer(content=f"Echo: {user_text}")


def _tool_name_of(messages: list[dict], call_id: str | None) -> str:
    for message in messages:
        for call in message.get("tool_calls") or []:
            if call.get("id") == call_id:
                return call["function"].get("name", "?")
    return "?"


def sample(schema: Any, root: Any = None) -> Any:
    """A deterministic instance of a JSON schema: ``const``, ``default``, first ``enum`` or ``examples`` value,
    else by type — string "sample", integer 1, number 1.5, boolean true, null, one-item arrays, objects with
    every property."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if part else target
        return sample(target, root)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("examples"):
        return schema["examples"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return sample(schema[key][0], root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {k: sample(v, root) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema["items"], root)] if isinstance(schema.get("items"), dict) else []
    return {"string": "sample", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "sample")
