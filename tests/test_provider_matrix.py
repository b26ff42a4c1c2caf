"""One matrix: every chat behaviour x every provider family, through the official ``openai`` SDK over real sockets.

One gateway serves four providers, each in front of its strict fake: ``openai`` (FakeOpenAI), ``anthropic``
(FakeAnthropic), ``gemini`` (FakeGemini) and ``groq``, the OpenAI-compatible preset, in front of a second FakeOpenAI
that knows Groq's model names. Each behaviour is ONE test whose client code is the same for every column; only the
model string differs (``Column.model``). What differs per provider is confined to the ``Column`` classes: how its
fake is scripted to give the answer the behaviour needs (a fake has no model behind it), and what the upstream must
have received in its own wire shape (Anthropic ``tool_result`` blocks, Gemini ``functionResponse`` parts, ...).

Cells that do not apply are excluded explicitly in ``ERROR_STATUSES`` (with the reason), never skipped.
Successful non-streamed answers all check ``x-mux-cost-usd == usage.cost == the price applied to the usage``;
streamed ones (asking ``stream_options.include_usage``) check ``usage.cost`` of the final usage chunk the same way.
The Groq fake is as strict as Groq about message properties (``GROQ_MESSAGE_FIELDS``), which is what caught mux
forwarding the ``annotations`` of an SDK-echoed assistant message to Groq.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import mux
from tests.fakes import anthropic_upstream as anthropic_fake
from tests.fakes import gemini_upstream as gemini_fake
from tests.fakes import openai_upstream as openai_fake
from tests.servers import serve

CLIENT_KEY = "sk-client-key-never-forwarded"
OPENAI_KEY = "sk-openai-upstream-0123456789abcdef"
GROQ_KEY = "gsk_groq-upstream-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-upstream-0123456789abcdef"
GEMINI_KEY = "AIza-gemini-upstream-0123456789"

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
IMAGE_URL = f"data:image/png;base64,{PNG_1PX}"

# Enums pin the arguments: FakeOpenAI derives a tool call's arguments from the schema (first enum value), and the
# other fakes are scripted with the same ones, so every column must answer the very same calls.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string", "enum": ["Europe/Paris"]}},
            "required": ["tz"],
        },
    },
}
WEATHER_CALL = ("get_weather", {"city": "Paris"})
CLOCK_CALL = ("get_time", {"tz": "Europe/Paris"})
# FakeOpenAI calls the tools a user message marks with ``call:<name>``; the other fakes ignore the marks.
ASK_WEATHER = "What is the weather in Paris? (call:get_weather)"
ASK_BOTH = "Weather and time in Paris? (call:get_weather call:get_time)"

CITY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["city", "population", "tags"],
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
CITY = {"city": "Paris", "population": 2102650, "tags": ["capital"]}

# Prices (USD per million tokens: input, output) of the models the columns use: the built-in ones
# (mux.catalog.prices) and, for Groq, which has none built in, the catalog entries of the gateway's config below.
PRICES = {
    "openai/gpt-4o-mini": (0.15, 0.60),
    "openai/o4-mini": (1.10, 4.40),
    "anthropic/claude-haiku-4-5": (1.00, 5.00),
    "gemini/gemini-2.5-flash": (0.30, 2.50),
    "groq/meta-llama/llama-4-scout-17b-16e-instruct": (0.11, 0.34),
    "groq/openai/gpt-oss-20b": (0.075, 0.30),
}

# Upstream status -> (gateway status, code): the README's "Errors" section.
GATEWAY_STATUS = {
    400: (400, "upstream_bad_request"),
    401: (502, "upstream_auth_failed"),
    403: (502, "upstream_forbidden"),
    404: (404, "upstream_not_found"),
    429: (429, "upstream_rate_limited"),
    500: (502, "upstream_server_error"),
    503: (503, "upstream_unavailable"),
    529: (503, "upstream_overloaded"),
}


# --- the columns ----------------------------------------------------------------------------------------------


class Column:
    """One provider of the matrix: its model strings, its fake, how to script it, and its wire shapes."""

    id: str
    model: str  # the model string the client sends
    reasoning_model: str
    returns_thinking: bool  # whether the provider answers reasoning text
    key: str
    retry_after: str  # what the fake's 429 asks to wait

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    @property
    def upstream_model(self) -> str:
        return self.model.split("/", 1)[1]

    @property
    def requests(self) -> list[Any]:
        return self.fake.requests

    @property
    def sent(self) -> dict[str, Any]:
        """The body of the last request the upstream received."""
        return self.fake.last.body

    def reset(self) -> None:
        self.fake.reset()

    # scripting: the answer the next request gets
    def say(self, text: str) -> None: ...
    def call(self, *calls: tuple[str, dict], text: str = "") -> None: ...
    def json_answer(self, value: Any) -> None: ...
    def stop_before(self, text: str, sequence: str) -> None: ...
    def truncate(self, text: str, tokens: int) -> None: ...
    def think(self, thought: str, text: str) -> None: ...
    def fail(self, status: int) -> None: ...


class OpenAIColumn(Column):
    """OpenAI itself, and (``GroqColumn``) the OpenAI-compatible preset: the body is forwarded as sent."""

    id = "openai"
    model = "openai/gpt-4o-mini"
    reasoning_model = "openai/o4-mini"  # reasoning_effort is for reasoning models; gpt-4o-mini is not one
    returns_thinking = False  # Chat Completions never returns OpenAI's reasoning text
    key = OPENAI_KEY
    retry_after = "20"

    def say(self, text: str) -> None:
        self.fake.script(openai_fake.Reply(content=text))

    def call(self, *calls: tuple[str, dict], text: str = "") -> None:
        pass  # the fake calls the tools the user message marks, with arguments from their schemas

    def json_answer(self, value: Any) -> None:
        pass  # the fake answers {"echo": ...} for json_object and an instance of the schema for json_schema

    def stop_before(self, text: str, sequence: str) -> None:
        self.fake.script(openai_fake.Reply(content=f"{text}{sequence} and more"))  # the fake stops at the sequence

    def truncate(self, text: str, tokens: int) -> None:
        self.fake.script(openai_fake.Reply(content=text + " and much more besides"))  # the fake cuts at max_tokens

    def think(self, thought: str, text: str) -> None:
        self.fake.script(openai_fake.Reply(content=text))

    def fail(self, status: int) -> None:
        self.fake.script(openai_fake.Reply(status=status))

    # the wire
    def check_auth(self, record: Any) -> None:
        assert record.headers["authorization"] == f"Bearer {self.key}"

    def check_plain(self, body: dict, messages: list[dict]) -> None:
        assert body == {"model": self.upstream_model, "messages": messages}

    def check_system(self, body: dict, system: str, rest: list[dict]) -> None:
        assert body["messages"] == [{"role": "system", "content": system}, *rest]

    def check_turns(self, body: dict, messages: list[dict]) -> None:
        assert body["messages"] == messages

    def check_tools(self, body: dict, tools: list[dict]) -> None:
        assert body["tools"] == tools

    def check_tool_result(self, body: dict, call_id: str, name: str, arguments: dict, result: str) -> None:
        *_, asked, answered = body["messages"]
        assert asked["role"] == "assistant" and [c["id"] for c in asked["tool_calls"]] == [call_id]
        assert json.loads(asked["tool_calls"][0]["function"]["arguments"]) == arguments
        assert answered == {"role": "tool", "tool_call_id": call_id, "content": result}

    def check_image(self, body: dict, part: dict) -> None:
        assert body["messages"][0]["content"][1] == part

    def check_json_object(self, body: dict) -> None:
        assert body["response_format"] == {"type": "json_object"}

    def check_json_schema(self, body: dict, response_format: dict) -> None:
        assert body["response_format"] == response_format

    def check_reasoning(self, body: dict) -> None:
        assert body["reasoning_effort"] == "low"  # untouched

    def check_stop(self, body: dict, stop: list[str]) -> None:
        assert body["stop"] == stop

    def check_length(self, body: dict, tokens: int) -> None:
        assert body["max_tokens"] == tokens

    def check_stream(self, record: Any) -> None:
        assert record.body["stream"] is True and record.body["stream_options"] == {"include_usage": True}


class GroqColumn(OpenAIColumn):
    """``type: groq`` in front of a FakeOpenAI serving Groq's model names and refusing message properties outside
    Groq's schema. Llama 4 Scout serves tools, images and JSON modes on Groq; reasoning_effort is for its reasoning
    models (gpt-oss), which answer ``message.reasoning`` (Groq docs, "Reasoning")."""

    id = "groq"
    model = "groq/meta-llama/llama-4-scout-17b-16e-instruct"
    reasoning_model = "groq/openai/gpt-oss-20b"
    returns_thinking = True
    key = GROQ_KEY

    def think(self, thought: str, text: str) -> None:
        self.fake.script(openai_fake.Reply(content=text, reasoning=thought))


class AnthropicColumn(Column):
    id = "anthropic"
    model = reasoning_model = "anthropic/claude-haiku-4-5"
    returns_thinking = True
    key = ANTHROPIC_KEY
    retry_after = "17"

    def say(self, text: str) -> None:
        self.fake.script(anthropic_fake.Reply(blocks=[anthropic_fake.Text(text)]))

    def call(self, *calls: tuple[str, dict], text: str = "") -> None:
        blocks: list[Any] = [anthropic_fake.Text(text)] if text else []
        self.fake.script(anthropic_fake.Reply(blocks=blocks + [anthropic_fake.ToolUse(n, a) for n, a in calls]))

    def json_answer(self, value: Any) -> None:
        pass  # JSON mode is a forced tool: the fake answers an instance of that tool's input schema

    def stop_before(self, text: str, sequence: str) -> None:
        self.fake.script(
            anthropic_fake.Reply(
                blocks=[anthropic_fake.Text(text)], stop_reason="stop_sequence", stop_sequence=sequence
            )
        )

    def truncate(self, text: str, tokens: int) -> None:
        self.fake.script(anthropic_fake.Reply(blocks=[anthropic_fake.Text(text)], stop_reason="max_tokens"))

    def think(self, thought: str, text: str) -> None:
        self.fake.script(anthropic_fake.Reply(blocks=[anthropic_fake.Thinking(thought), anthropic_fake.Text(text)]))

    def fail(self, status: int) -> None:
        self.fake.script(anthropic_fake.Reply(status=status))

    def check_auth(self, record: Any) -> None:
        assert record.headers["x-api-key"] == self.key and "authorization" not in record.headers

    def check_plain(self, body: dict, messages: list[dict]) -> None:
        assert body == {"model": self.upstream_model, "messages": messages, "max_tokens": 64000}

    def check_system(self, body: dict, system: str, rest: list[dict]) -> None:
        assert body["system"] == system and body["messages"] == rest

    def check_turns(self, body: dict, messages: list[dict]) -> None:
        assert body["messages"] == messages

    def check_tools(self, body: dict, tools: list[dict]) -> None:
        assert body["tools"] == [
            {
                "name": t["function"]["name"],
                "description": t["function"]["description"],
                "input_schema": t["function"]["parameters"],
            }
            for t in tools
        ]

    def check_tool_result(self, body: dict, call_id: str, name: str, arguments: dict, result: str) -> None:
        *_, asked, answered = body["messages"]
        assert asked == {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call_id, "name": name, "input": arguments}],
        }
        assert answered == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call_id, "content": result}],
        }

    def check_image(self, body: dict, part: dict) -> None:
        assert body["messages"][0]["content"][1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX},
        }

    def check_json_object(self, body: dict) -> None:
        assert body["tool_choice"] == {"type": "tool", "name": body["tools"][-1]["name"]}
        assert body["tools"][-1]["input_schema"] == {"type": "object"}

    def check_json_schema(self, body: dict, response_format: dict) -> None:
        spec = response_format["json_schema"]
        assert body["tool_choice"] == {"type": "tool", "name": spec["name"]}
        assert body["tools"][-1]["name"] == spec["name"] and body["tools"][-1]["input_schema"] == spec["schema"]

    def check_reasoning(self, body: dict) -> None:
        assert body["thinking"]["type"] == "enabled" and body["thinking"]["budget_tokens"] >= 1024

    def check_stop(self, body: dict, stop: list[str]) -> None:
        assert body["stop_sequences"] == stop

    def check_length(self, body: dict, tokens: int) -> None:
        assert body["max_tokens"] == tokens

    def check_stream(self, record: Any) -> None:
        assert record.body["stream"] is True and "stream_options" not in record.body


class GeminiColumn(Column):
    id = "gemini"
    model = reasoning_model = "gemini/gemini-2.5-flash"
    returns_thinking = True
    key = GEMINI_KEY
    retry_after = "17"

    def say(self, text: str) -> None:
        self.fake.script(gemini_fake.Reply(text=text))

    def call(self, *calls: tuple[str, dict], text: str = "") -> None:
        self.fake.script(gemini_fake.Reply(text=text, calls=list(calls)))

    def json_answer(self, value: Any) -> None:
        self.fake.script(gemini_fake.Reply(text=json.dumps(value)))

    def stop_before(self, text: str, sequence: str) -> None:
        self.fake.script(gemini_fake.Reply(text=text, finish="STOP"))  # STOP: "natural stop or stop sequence"

    def truncate(self, text: str, tokens: int) -> None:
        self.fake.script(gemini_fake.Reply(text=text, finish="MAX_TOKENS"))

    def think(self, thought: str, text: str) -> None:
        self.fake.script(gemini_fake.Reply(text=text, thoughts=[thought]))

    def fail(self, status: int) -> None:
        self.fake.script(gemini_fake.Reply(status=status))

    @staticmethod
    def _parts(message: dict) -> list[dict]:
        content = message["content"]
        return [{"text": content}] if isinstance(content, str) else [{"text": p["text"]} for p in content]

    def _contents(self, messages: list[dict]) -> list[dict]:
        return [{"role": "model" if m["role"] == "assistant" else "user", "parts": self._parts(m)} for m in messages]

    def check_auth(self, record: Any) -> None:
        assert record.headers["x-goog-api-key"] == self.key and "authorization" not in record.headers

    def check_plain(self, body: dict, messages: list[dict]) -> None:
        assert body == {"contents": self._contents(messages)}
        assert self.fake.last.path == f"/v1beta/models/{self.upstream_model}:generateContent"

    def check_system(self, body: dict, system: str, rest: list[dict]) -> None:
        assert body["systemInstruction"] == {"parts": [{"text": system}]}
        assert body["contents"] == self._contents(rest)

    def check_turns(self, body: dict, messages: list[dict]) -> None:
        assert body["contents"] == self._contents(messages)

    def check_tools(self, body: dict, tools: list[dict]) -> None:
        def declaration(tool: dict) -> dict:  # Gemini's Schema: upper-case type names
            function = tool["function"]
            [(key, prop)] = function["parameters"]["properties"].items()
            return {
                "name": function["name"],
                "description": function["description"],
                "parameters": {
                    "type": "OBJECT",
                    "properties": {key: {"type": "STRING", "enum": prop["enum"]}},
                    "required": [key],
                },
            }

        assert body["tools"] == [{"functionDeclarations": [declaration(t) for t in tools]}]

    def check_tool_result(self, body: dict, call_id: str, name: str, arguments: dict, result: str) -> None:
        *_, asked, answered = body["contents"]
        assert asked["role"] == "model" and [p["functionCall"] for p in asked["parts"]] == [
            {"name": name, "args": arguments}
        ]
        assert answered == {
            "role": "user",
            "parts": [{"functionResponse": {"name": name, "response": json.loads(result)}}],
        }

    def check_image(self, body: dict, part: dict) -> None:
        assert body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG_1PX}}

    def check_json_object(self, body: dict) -> None:
        assert body["generationConfig"] == {"responseMimeType": "application/json"}

    def check_json_schema(self, body: dict, response_format: dict) -> None:
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseSchema"] == {
            "type": "OBJECT",
            "required": ["city", "population", "tags"],
            "properties": {
                "city": {"type": "STRING"},
                "population": {"type": "INTEGER"},
                "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
            },
        }

    def check_reasoning(self, body: dict) -> None:
        thinking = body["generationConfig"]["thinkingConfig"]
        assert thinking["includeThoughts"] is True and thinking["thinkingBudget"] > 0

    def check_stop(self, body: dict, stop: list[str]) -> None:
        assert body["generationConfig"]["stopSequences"] == stop

    def check_length(self, body: dict, tokens: int) -> None:
        assert body["generationConfig"]["maxOutputTokens"] == tokens

    def check_stream(self, record: Any) -> None:
        assert record.path == f"/v1beta/models/{self.upstream_model}:streamGenerateContent"
        assert record.query == {"alt": ["sse"]}


COLUMNS = ("openai", "anthropic", "gemini", "groq")

# Each upstream status x column, both streamed and not. Excluded cells, and why:
# - 529 for openai and groq: 529 is Anthropic's own "overloaded_error" status; OpenAI-dialect servers answer an
#   overload with 503 (covered), and never send 529.
# - 529 for gemini: likewise Anthropic-only; Google answers an overload with 503 UNAVAILABLE (covered).
# - 503 for anthropic: Anthropic's "Errors" reference lists 400, 401, 402, 403, 404, 413, 429, 500, 504 and 529; its
#   overload is 529 (covered, mapped to 503), a 503 is not among its answers.
ERROR_STATUSES = {
    "openai": (400, 401, 403, 404, 429, 500, 503),
    "anthropic": (400, 401, 403, 404, 429, 500, 529),
    "gemini": (400, 401, 403, 404, 429, 500, 503),
    "groq": (400, 401, 403, 404, 429, 500, 503),
}
ERROR_CELLS = [(column, status) for column in COLUMNS for status in ERROR_STATUSES[column]]


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def columns() -> Iterator[dict[str, Column]]:
    openai_upstream = openai_fake.FakeOpenAI(
        api_key=OPENAI_KEY, models={"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "o4-mini": "o4-mini-2025-04-16"}
    )
    groq_upstream = openai_fake.FakeOpenAI(
        api_key=GROQ_KEY,
        message_fields=openai_fake.GROQ_MESSAGE_FIELDS,
        models={
            "meta-llama/llama-4-scout-17b-16e-instruct": "meta-llama/llama-4-scout-17b-16e-instruct",
            "openai/gpt-oss-20b": "openai/gpt-oss-20b",
        },
    )
    anthropic_upstream = anthropic_fake.FakeAnthropic(api_key=ANTHROPIC_KEY)
    gemini_upstream = gemini_fake.FakeGemini(api_key=GEMINI_KEY)
    with (
        serve(openai_upstream) as openai_url,
        serve(groq_upstream) as groq_url,
        serve(anthropic_upstream) as anthropic_url,
        serve(gemini_upstream) as gemini_url,
    ):
        openai_upstream.url, groq_upstream.url = openai_url, groq_url
        anthropic_upstream.url = anthropic_url
        gemini_upstream.url = gemini_url  # type: ignore[attr-defined]
        yield {
            "openai": OpenAIColumn(openai_upstream),
            "groq": GroqColumn(groq_upstream),
            "anthropic": AnthropicColumn(anthropic_upstream),
            "gemini": GeminiColumn(gemini_upstream),
        }


@pytest.fixture(scope="module")
def gateway(columns: dict[str, Column]) -> mux.Gateway:
    def at(name: str) -> Any:
        return columns[name].fake

    config = {
        "providers": [
            {"name": "openai", "type": "openai", "base_url": at("openai").base_url, "api_key": OPENAI_KEY},
            {"name": "anthropic", "type": "anthropic", "base_url": at("anthropic").url, "api_key": ANTHROPIC_KEY},
            {"name": "gemini", "type": "gemini", "base_url": at("gemini").url, "api_key": GEMINI_KEY},
            {"name": "groq", "type": "groq", "base_url": at("groq").base_url, "api_key": GROQ_KEY},
        ],
        "catalog": {
            "groq/meta-llama/llama-4-scout-17b-16e-instruct": {
                "input": 0.11,
                "output": 0.34,
                "tools": True,
                "vision": True,
                "json_schema": True,
            },
            "groq/openai/gpt-oss-20b": {"input": 0.075, "output": 0.30, "tools": True, "reasoning": True},
        },
    }
    return mux.build_app(mux.parse_config(config))


@pytest.fixture(scope="module")
def client(gateway: mux.Gateway) -> Iterator[openai.OpenAI]:
    with serve(gateway) as url:
        sdk = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)
        yield sdk
        sdk.close()


@pytest.fixture(autouse=True)
def clean(columns: dict[str, Column], gateway: mux.Gateway) -> Iterator[None]:
    """Every cell starts with empty fakes (no records, no script) and no breaker history: the error cells fail on
    purpose, and their failures must not open a breaker for the next cell."""
    for column in columns.values():
        column.reset()
    gateway.routing.health.targets.clear()
    yield
    for column in columns.values():
        column.reset()


@pytest.fixture(params=COLUMNS)
def col(request: pytest.FixtureRequest, columns: dict[str, Column]) -> Column:
    return columns[request.param]


# --- helpers --------------------------------------------------------------------------------------------------


def price_cost(model: str, usage: Any) -> float:
    price_in, price_out = PRICES[model]
    cached = getattr(usage.prompt_tokens_details, "cached_tokens", None) or 0
    assert cached == 0, "the matrix's answers are never cached"
    return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1_000_000


def check_cost(raw: Any, completion: Any, model: str) -> None:
    """Usage and cost agree: the header equals ``usage.cost``, which is the price applied to the usage."""
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    cost = usage.model_extra["cost"]
    assert float(raw.headers["x-mux-cost-usd"]) == pytest.approx(cost, rel=1e-6)
    assert cost == pytest.approx(price_cost(model, usage), rel=1e-6)


def create(client: openai.OpenAI, model: str, **params: Any) -> tuple[Any, Any]:
    """One non-streamed completion: answer the raw response (for headers) and the parsed completion."""
    raw = client.chat.completions.with_raw_response.create(model=model, **params)
    return raw, raw.parse()


def collect(stream: Any) -> dict[str, Any]:
    """Read a stream the way clients do: text, reasoning, tool calls reassembled by index, finish, usage."""
    text, reasoning, finish, role = "", "", None, None
    calls: dict[int, dict[str, str]] = {}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            role = role or delta.role
            text += delta.content or ""
            reasoning += (delta.model_extra or {}).get("reasoning") or ""
            for part in delta.tool_calls or ():
                entry = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += part.id or ""
                entry["name"] += (part.function.name or "") if part.function else ""
                entry["arguments"] += (part.function.arguments or "") if part.function else ""
            finish = choice.finish_reason or finish
    return {
        "chunks": chunks,
        "text": text,
        "reasoning": reasoning,
        "finish": finish,
        "role": role,
        "calls": [calls[i] for i in sorted(calls)],
    }


def answer(client: openai.OpenAI, model: str, stream: bool, **params: Any) -> dict[str, Any]:
    """One completion, streamed (with the usage chunk) or not, read into the same shape: text, reasoning, finish,
    tool calls. Either way the cost is checked against the price: header and ``usage.cost`` when not streamed, the
    final usage chunk's ``cost`` when streamed."""
    if not stream:
        raw, completion = create(client, model, **params)
        check_cost(raw, completion, model)
        choice = completion.choices[0]
        return {
            "text": choice.message.content,
            "reasoning": (choice.message.model_extra or {}).get("reasoning"),
            "finish": choice.finish_reason,
            "calls": choice.message.tool_calls or [],
        }
    got = collect(
        client.chat.completions.create(model=model, stream=True, stream_options={"include_usage": True}, **params)
    )
    final = got["chunks"][-1]
    assert final.choices == [] and final.usage is not None and got["role"] == "assistant"
    assert final.usage.model_extra["cost"] == pytest.approx(price_cost(model, final.usage), rel=1e-6)
    return {**got, "reasoning": got["reasoning"] or None}


def matches(schema: dict, value: Any) -> bool:
    """A tiny JSON-schema checker for the keywords CITY_SCHEMA uses: type, properties, required,
    additionalProperties: false, items."""
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(k in value for k in schema.get("required", ()))
            and (schema.get("additionalProperties", True) is not False or set(value) <= set(properties))
            and all(matches(properties[k], v) for k, v in value.items() if k in properties)
        )
    if kind == "array":
        return isinstance(value, list) and all(matches(schema.get("items", {}), v) for v in value)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "null": type(None)}.get(kind, object))


def test_the_schema_checker_refuses_what_does_not_match():
    assert matches(CITY_SCHEMA, CITY)
    for bad in (
        {"city": "Paris", "population": 1},
        {**CITY, "population": "many"},
        {**CITY, "tags": [1]},
        {**CITY, "extra": True},
        {**CITY, "population": True},
        ["Paris"],
    ):
        assert not matches(CITY_SCHEMA, bad), bad


# --- the behaviours -------------------------------------------------------------------------------------------


def test_plain(client, col):
    col.say("Paris is the capital of France.")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    raw, completion = create(client, col.model, messages=messages)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "Paris is the capital of France."
    assert choice.finish_reason == "stop" and completion.object == "chat.completion"
    assert raw.headers["x-mux-provider"] == col.id
    check_cost(raw, completion, col.model)
    assert len(col.requests) == 1
    record = col.fake.last
    col.check_auth(record)
    assert CLIENT_KEY not in json.dumps(record.headers) and CLIENT_KEY not in json.dumps(record.body)
    col.check_plain(record.body, messages)


def test_system_prompt(client, col):
    col.say("Bonjour.")
    rest = [{"role": "user", "content": "Say hello."}]
    raw, completion = create(client, col.model, messages=[{"role": "system", "content": "Answer in French."}, *rest])
    assert completion.choices[0].message.content == "Bonjour."
    check_cost(raw, completion, col.model)
    col.check_system(col.sent, "Answer in French.", rest)


def test_multi_turn(client, col):
    col.say("You said your name is Ada.")
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    raw, completion = create(client, col.model, messages=messages)
    assert completion.choices[0].message.content == "You said your name is Ada."
    check_cost(raw, completion, col.model)
    col.check_turns(col.sent, messages)


def test_tools_non_stream(client, col):
    col.call(WEATHER_CALL)
    raw, completion = create(client, col.model, messages=[{"role": "user", "content": ASK_WEATHER}], tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    check_cost(raw, completion, col.model)
    col.check_tools(col.sent, [WEATHER])


def test_tools_stream(client, col):
    col.call(WEATHER_CALL)
    got = collect(
        client.chat.completions.create(
            model=col.model, messages=[{"role": "user", "content": ASK_WEATHER}], tools=[WEATHER], stream=True
        )
    )
    assert got["role"] == "assistant" and got["finish"] == "tool_calls"
    [call] = got["calls"]
    assert call["id"] and call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert len({c.id for c in got["chunks"]}) == 1
    col.check_tools(col.sent, [WEATHER])


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_parallel_tool_calls(client, col, stream):
    col.call(WEATHER_CALL, CLOCK_CALL)
    params = {"messages": [{"role": "user", "content": ASK_BOTH}], "tools": [WEATHER, CLOCK]}
    if stream:
        got = collect(client.chat.completions.create(model=col.model, stream=True, **params))
        finish, calls = got["finish"], [(c["id"], c["name"], json.loads(c["arguments"])) for c in got["calls"]]
    else:
        raw, completion = create(client, col.model, **params)
        check_cost(raw, completion, col.model)
        finish = completion.choices[0].finish_reason
        calls = [
            (c.id, c.function.name, json.loads(c.function.arguments)) for c in completion.choices[0].message.tool_calls
        ]
    assert finish == "tool_calls"
    assert [(name, arguments) for _, name, arguments in calls] == [WEATHER_CALL, CLOCK_CALL]
    assert all(call_id for call_id, _, _ in calls) and len({call_id for call_id, _, _ in calls}) == 2
    col.check_tools(col.sent, [WEATHER, CLOCK])


def test_tool_results_round_trip(client, col):
    messages: list[dict] = [{"role": "user", "content": ASK_WEATHER}]
    col.call(WEATHER_CALL)
    first = client.chat.completions.create(model=col.model, messages=messages, tools=[WEATHER])
    [call] = first.choices[0].message.tool_calls
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    result = json.dumps({"temp_c": 21})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    col.say("It is 21°C in Paris.")
    raw, final = create(client, col.model, messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "It is 21°C in Paris." and final.choices[0].finish_reason == "stop"
    check_cost(raw, final, col.model)
    assert len(col.requests) == 2
    col.check_tool_result(col.sent, call.id, "get_weather", {"city": "Paris"}, result)


def test_image_data_url(client, col):
    col.say("A single pixel.")
    part = {"type": "image_url", "image_url": {"url": IMAGE_URL}}
    raw, completion = create(
        client,
        col.model,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is in this image?"}, part]}],
    )
    assert completion.choices[0].message.content == "A single pixel."
    check_cost(raw, completion, col.model)
    col.check_image(col.sent, part)


STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])


@STREAMED
def test_json_object(client, col, stream):
    col.json_answer({"answer": "Paris"})
    got = answer(
        client,
        col.model,
        stream,
        messages=[{"role": "user", "content": "Capital of France, as JSON."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(got["text"]), dict)
    assert got["finish"] == "stop" and not got["calls"]
    col.check_json_object(col.sent)


@STREAMED
def test_json_schema(client, col, stream):
    col.json_answer(CITY)
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "city_info", "strict": True, "schema": CITY_SCHEMA},
    }
    got = answer(
        client,
        col.model,
        stream,
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        response_format=response_format,
    )
    value = json.loads(got["text"])
    assert matches(CITY_SCHEMA, value), value
    assert got["finish"] == "stop" and not got["calls"]
    col.check_json_schema(col.sent, response_format)


@STREAMED
def test_reasoning(client, col, stream):
    col.think("6 times 7 is 42.", "42")
    got = answer(
        client,
        col.reasoning_model,
        stream,
        messages=[{"role": "user", "content": "What is 6*7?"}],
        reasoning_effort="low",
    )
    assert got["text"] == "42" and got["finish"] == "stop"
    assert got["reasoning"] == ("6 times 7 is 42." if col.returns_thinking else None)
    col.check_reasoning(col.sent)


@STREAMED
def test_stop(client, col, stream):
    col.stop_before("one two ", "END")
    got = answer(client, col.model, stream, messages=[{"role": "user", "content": "Count."}], stop=["END"])
    assert got["finish"] == "stop" and got["text"].rstrip() == "one two" and "END" not in got["text"]
    col.check_stop(col.sent, ["END"])


@STREAMED
def test_length(client, col, stream):
    col.truncate("one two three", 3)
    got = answer(client, col.model, stream, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=3)
    assert got["finish"] == "length" and got["text"] == "one two three"
    col.check_length(col.sent, 3)


def test_stream_plain_with_usage(client, col):
    col.say("Hello there, friend.")
    got = collect(
        client.chat.completions.create(
            model=col.model,
            messages=[{"role": "user", "content": "Greet me."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert got["role"] == "assistant" and got["text"] == "Hello there, friend." and got["finish"] == "stop"
    chunks = got["chunks"]
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert [c for c in chunks if c.usage is not None] == [final]
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
    assert final.usage.completion_tokens > 0
    assert final.usage.model_extra["cost"] == pytest.approx(price_cost(col.model, final.usage), rel=1e-6)
    col.check_stream(col.fake.last)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("column, status", ERROR_CELLS, ids=[f"{c}-{s}" for c, s in ERROR_CELLS])
def test_upstream_error_status(client, columns, column, status, stream):
    col = columns[column]
    col.fail(status)
    with pytest.raises(openai.APIStatusError) as info:
        answer = client.chat.completions.create(
            model=col.model, messages=[{"role": "user", "content": "Hi"}], stream=stream
        )
        if stream:
            list(answer)
    gateway_status, code = GATEWAY_STATUS[status]
    error = info.value
    assert (error.status_code, error.code) == (gateway_status, code), error.body
    assert set(error.body) >= {"message", "type", "param", "code"}
    assert error.body["message"].startswith(f"Provider '{col.id}'")
    assert error.body["type"] == {
        400: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }.get(gateway_status, "upstream_error")
    assert col.key not in json.dumps(error.body)
    if status == 429:
        assert error.response.headers["retry-after"] == col.retry_after
    assert len(col.requests) == 1  # answered at once: no retry of a lone target
