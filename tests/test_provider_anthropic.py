"""The Anthropic adapter: request translation, response and stream translation, error mapping, and end to end
with the official ``openai`` SDK -> mux -> a strict fake of the Messages API (tests/fakes/anthropic_upstream.py).

The recorded streams below are the three example streams of Anthropic's "Streaming Messages" reference
(basic request, tool use, extended thinking), as stored in a copy of the docs found with the search tool
(code corpus, "Claude API Reference", streaming examples); the error event is the documented in-stream
``overloaded_error``. Non-stream payloads follow the Message object of the "Messages" reference.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mux
from mux.config import parse_config
from mux.errors import InvalidRequest, UpstreamError
from mux.providers import ADAPTERS, Call
from mux.providers.anthropic import ADAPTER, AnthropicStream, max_output_tokens
from mux.sse import SSEEvent, SSEParser
from mux.wire import decode_request
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, Text, Thinking, ToolUse
from tests.servers import serve

KEY = "sk-ant-upstream-0123456789abcdef"
CLIENT_KEY = "sk-client-never-forwarded"
MODEL = "anthropic/claude-haiku-4-5"
HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
}
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def provider(**extra: Any):
    return parse_config({"providers": [{"name": "anthropic", "type": "anthropic", "api_key": KEY, **extra}]}).providers[
        0
    ]


PROVIDER = provider()


def call(body: dict[str, Any], model: str = "claude-haiku-4-5", end_user: str | None = None) -> Call:
    view, fields = decode_request(msgspec.json.encode({"model": MODEL, "messages": HELLO, **body}))
    return Call(request=view, fields=fields, model=model, end_user=end_user)


def build(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return json.loads(ADAPTER.build_request(PROVIDER, call(body, **kwargs)).body)


def refused(body: dict[str, Any], **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        build(body, **kwargs)
    return info.value


# --- request translation -------------------------------------------------------------------------------------


def test_registered_under_its_type_with_its_prefixes_and_env_key():
    assert ADAPTERS["anthropic"] is ADAPTER
    assert ADAPTER.default_base_url == "https://api.anthropic.com"
    assert ADAPTER.env_keys == ("ANTHROPIC_API_KEY",) and ADAPTER.model_prefixes == ("claude-",)


def test_request_posts_to_messages_with_key_version_and_extra_headers():
    upstream = ADAPTER.build_request(provider(headers={"anthropic-beta": "files-api-2025-04-14"}), call({}))
    assert upstream.method == "POST" and upstream.url == "https://api.anthropic.com/v1/messages"
    assert upstream.headers == {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "files-api-2025-04-14",
        "x-api-key": KEY,
    }
    assert json.loads(upstream.body) == {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 64000,
    }


def test_system_and_developer_messages_become_system_blocks_one_per_part_in_order():
    body = build(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hi"},
                {"role": "system", "content": "Late rule."},
            ]
        }
    )
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
        {"type": "text", "text": "Late rule."},
    ]
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


def test_system_content_parts_reach_anthropic_unaltered_without_separators():
    parts = [{"type": "text", "text": "A"}, {"type": "text", "text": "  "}, {"type": "text", "text": "B\n"}]
    body = build({"messages": [{"role": "system", "content": parts}, *HELLO]})
    assert body["system"] == [{"type": "text", "text": "A"}, {"type": "text", "text": "B\n"}]


def test_a_lone_system_part_is_sent_as_a_plain_string():
    assert (
        build({"messages": [{"role": "developer", "content": [{"type": "text", "text": " Be brief. "}]}, *HELLO]})[
            "system"
        ]
        == " Be brief. "
    )


def test_consecutive_turns_of_one_role_are_merged_and_roles_alternate():
    body = build(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": "d"},
                {"role": "user", "content": "e"},
            ]
        }
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
        {"role": "user", "content": "e"},
    ]


def test_empty_and_whitespace_only_text_is_left_out():
    body = build(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "  "}, {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": "\n"},
                {"role": "user", "content": "again"},
            ]
        }
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "again"}]}
    ]


def test_a_conversation_starting_with_the_assistant_or_without_turns_is_refused():
    assert (
        refused({"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "x"}]}).param
        == "messages"
    )
    assert refused({"messages": [{"role": "system", "content": "only rules"}]}).param == "messages"


def test_final_assistant_prefill_loses_trailing_whitespace():
    body = build({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer is "}]})
    assert body["messages"][-1] == {"role": "assistant", "content": "The answer is"}


def test_images_map_to_base64_and_url_sources():
    body = build(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
                        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,AAAA"}},
                    ],
                }
            ]
        }
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
    ]


def test_unsupported_image_types_are_refused_naming_the_part():
    error = refused(
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}
            ]
        }
    )
    assert error.param == "messages[0].content[0].image_url.url" and "image/bmp" in error.message


def test_files_become_document_blocks_and_file_ids_are_refused():
    text = "aGVsbG8gd29ybGQ="  # "hello world"
    body = build(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
                        },
                        {"type": "file", "file": {"file_data": f"data:text/plain;base64,{text}"}},
                        {"type": "text", "text": "Summarise"},
                    ],
                }
            ]
        }
    )
    assert body["messages"][0]["content"][:2] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello world"}},
    ]
    error = refused({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]})
    assert error.param == "messages[0].content[0].file.file_id"


@pytest.mark.parametrize(
    "choice, expected",
    [
        (None, None),
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"}),
    ],
)
def test_tools_and_tool_choice_map_to_anthropic_forms(choice, expected):
    extra = {} if choice is None else {"tool_choice": choice}
    body = build({"tools": [WEATHER_TOOL, TIME_TOOL], **extra})
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        },
        {"name": "get_time", "input_schema": TIME_TOOL["function"]["parameters"]},
    ]
    assert body.get("tool_choice") == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use():
    assert build({"tools": [WEATHER_TOOL], "parallel_tool_calls": False})["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert build({"tools": [WEATHER_TOOL], "tool_choice": "required", "parallel_tool_calls": False})["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }


def test_allowed_tools_narrow_the_tool_list():
    body = build(
        {
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
        }
    )
    assert [t["name"] for t in body["tools"]] == ["get_time"] and body["tool_choice"] == {"type": "any"}


def test_tool_choice_without_tools_is_not_sent_and_custom_tools_are_refused():
    assert "tool_choice" not in build({"tool_choice": "auto"})
    assert refused({"tools": [{"type": "custom", "custom": {"name": "x"}}]}).param == "tools[0]"


def test_tool_calls_become_tool_use_and_tool_messages_one_user_turn_of_results():
    body = build(
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_A",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                        },
                        {"id": "toolu_B", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_A", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_B", "content": [{"type": "text", "text": "22C"}]},
                {"role": "user", "content": "Thanks"},
            ],
        }
    )
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_B", "content": "22C"},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


def test_tool_call_arguments_that_are_not_a_json_object_are_refused():
    error = refused(
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "[1, 2"}}],
                },
            ]
        }
    )
    assert error.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    "model, limit",
    [
        ("claude-haiku-4-5", 64000),
        ("claude-opus-4-1-20250805", 32000),
        ("claude-opus-4-5", 64000),
        ("claude-3-5-haiku-latest", 8192),
        ("claude-3-7-sonnet-20250219", 64000),
        ("claude-unknown", 4096),
    ],
)
def test_max_tokens_defaults_to_the_models_documented_output_maximum(model, limit):
    assert max_output_tokens(model) == limit
    assert build({}, model=model)["max_tokens"] == limit


def test_max_completion_tokens_wins_over_max_tokens():
    assert build({"max_tokens": 300})["max_tokens"] == 300
    assert build({"max_tokens": 300, "max_completion_tokens": 200})["max_tokens"] == 200


def test_stop_temperature_top_p_top_k_and_end_user():
    body = build({"stop": "END", "temperature": 0.3, "top_p": 0.9, "top_k": 40}, end_user="user-42")
    assert body["stop_sequences"] == ["END"] and body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert body["top_k"] == 40 and body["metadata"] == {"user_id": "user-42"}
    assert build({"stop": ["a", "b"], "user": "u-7"})["stop_sequences"] == ["a", "b"]
    assert build({"user": "u-7"})["metadata"] == {"user_id": "u-7"}


def test_temperature_above_one_is_clamped_with_a_note():
    upstream = ADAPTER.build_request(PROVIDER, call({"temperature": 1.6}))
    assert json.loads(upstream.body)["temperature"] == 1.0
    assert upstream.notes == ["clamped 'temperature' 1.6 to 1: Anthropic's range is 0-1"]


@pytest.mark.parametrize(
    "param, value", [("n", 2), ("logprobs", True), ("logit_bias", {"50256": -100}), ("modalities", ["text", "audio"])]
)
def test_parameters_that_cannot_be_honoured_are_refused_by_name(param, value):
    assert refused({param: value}).param == param


def test_harmless_parameters_are_dropped_with_notes_or_refused_when_required():
    extra = {
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "store": True,
        "n": 1,
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "web_search_options": {},
        "logprobs": False,
    }
    upstream = ADAPTER.build_request(PROVIDER, call(extra))
    body = json.loads(upstream.body)
    assert set(body) == {"model", "messages", "max_tokens"}
    assert sorted(upstream.notes) == sorted(
        f"dropped '{name}': it has no Anthropic equivalent"
        for name in (
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "store",
            "service_tier",
            "prompt_cache_key",
            "web_search_options",
        )
    )
    assert refused({"seed": 7, "provider": {"require_parameters": True}}).param == "seed"


def test_json_object_is_a_forced_tool():
    body = build({"response_format": {"type": "json_object"}})
    assert body["tools"] == [
        {"name": "json_response", "description": body["tools"][0]["description"], "input_schema": {"type": "object"}}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "json_response"}


def test_json_schema_is_a_forced_tool_named_after_the_schema():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = build(
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": schema, "description": "A place"},
            }
        }
    )
    assert body["tools"] == [{"name": "place", "description": "A place", "input_schema": schema}]
    assert body["tool_choice"] == {"type": "tool", "name": "place"}


def test_json_mode_with_client_tools_lets_the_model_pick_any_tool():
    body = build(
        {
            "tools": [WEATHER_TOOL],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "get_weather", "schema": {"type": "object"}},
            },
        }
    )
    assert [t["name"] for t in body["tools"]] == ["get_weather", "json_response"]
    assert body["tool_choice"] == {"type": "any"}


def test_json_schema_without_an_object_root_is_wrapped():
    body = build(
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "tags", "schema": {"type": "array", "items": {"type": "string"}}},
            }
        }
    )
    assert body["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {"value": {"type": "array", "items": {"type": "string"}}},
        "required": ["value"],
    }


@pytest.mark.parametrize(
    "extra, max_tokens, budget",
    [
        ({"reasoning_effort": "low"}, 64000, 2048),
        ({"reasoning_effort": "high"}, 64000, 16384),
        ({"reasoning": {"effort": "medium"}}, 64000, 8192),
        ({"reasoning": {"enabled": True}}, 64000, 8192),
        ({"reasoning": {"max_tokens": 5000}}, 64000, 5000),
        ({"reasoning_effort": "high", "max_completion_tokens": 6000}, 6000, 3000),
        ({"reasoning_effort": "minimal", "max_completion_tokens": 1500}, 1500, 1024),
    ],
)
def test_reasoning_enables_thinking_with_a_budget_below_max_tokens(extra, max_tokens, budget):
    body = build(extra)
    assert body["max_tokens"] == max_tokens
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}


def test_reasoning_off_sends_no_thinking():
    assert "thinking" not in build({"reasoning_effort": "none"})
    assert "thinking" not in build({"reasoning": {"enabled": False}})


def test_reasoning_drops_temperature_and_low_top_p_with_notes():
    upstream = ADAPTER.build_request(PROVIDER, call({"reasoning_effort": "low", "temperature": 0.2, "top_p": 0.5}))
    body = json.loads(upstream.body)
    assert "temperature" not in body and "top_p" not in body
    assert upstream.notes == [
        "dropped 'temperature': Anthropic allows no temperature with reasoning",
        "dropped 'top_p': Anthropic allows top_p below 0.95 only without reasoning",
    ]


def test_reasoning_is_refused_with_a_forced_tool_json_mode_or_too_few_tokens():
    assert (
        refused({"reasoning_effort": "low", "tools": [WEATHER_TOOL], "tool_choice": "required"}).param == "tool_choice"
    )
    assert refused({"reasoning_effort": "low", "response_format": {"type": "json_object"}}).param == "response_format"
    assert refused({"reasoning_effort": "low", "max_completion_tokens": 1024}).param == "max_completion_tokens"
    assert refused({"reasoning": {"max_tokens": 4000}, "max_tokens": 3000}).param == "reasoning.max_tokens"


# --- response translation ------------------------------------------------------------------------------------


def anthropic_message(content: list[dict], stop_reason: str = "end_turn", **usage: int) -> bytes:
    return json.dumps(
        {
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 25, **usage},
        }
    ).encode()


def parse(content: list[dict], stop_reason: str = "end_turn", body: dict | None = None, **usage: int) -> dict:
    """The translated completion, with the message's null fields left out."""
    completion = ADAPTER.parse_response(PROVIDER, call(body or {}), anthropic_message(content, stop_reason, **usage))
    answer = json.loads(completion.body)
    for choice in answer["choices"]:
        choice["message"] = {k: v for k, v in choice["message"].items() if v is not None}
    return answer


def test_text_answer_becomes_a_chat_completion():
    answer = parse([{"type": "text", "text": "Hi! My name is Claude."}])
    assert answer["id"] == "chatcmpl-msg_013Zva2CMHLNnXjNJJKqJ2EF" and answer["object"] == "chat.completion"
    assert answer["model"] == "claude-haiku-4-5-20251001" and isinstance(answer["created"], int)
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi! My name is Claude."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 25,
        "total_tokens": 35,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "completion_tokens_details": None,
        "cost": None,
    }


def test_tool_use_and_thinking_blocks_become_tool_calls_and_reasoning():
    answer = parse(
        [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCg"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "celsius"},
            },
        ],
        "tool_use",
    )
    message = answer["choices"][0]["message"]
    assert message["content"] == "Let me check." and message["reasoning"] == "The user wants weather."
    assert message["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}'},
        }
    ]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }
    assert answer["choices"][0]["finish_reason"] == "tool_calls"


def test_excluded_reasoning_is_not_returned():
    answer = parse(
        [{"type": "thinking", "thinking": "secret", "signature": "s"}, {"type": "text", "text": "4"}],
        body={"reasoning": {"effort": "low", "exclude": True}},
    )
    assert "reasoning" not in answer["choices"][0]["message"]


@pytest.mark.parametrize(
    "stop_reason, finish",
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason, finish):
    assert parse([{"type": "text", "text": "x"}], stop_reason)["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_in_the_prompt():
    completion = ADAPTER.parse_response(
        PROVIDER,
        call({}),
        anthropic_message(
            [{"type": "text", "text": "x"}],
            input_tokens=100,
            output_tokens=50,
            cache_read_input_tokens=1000,
            cache_creation_input_tokens=200,
        ),
    )
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1300, 50, 1350)
    assert usage.cached_tokens == 1000 and usage.cache_write_tokens == 200
    assert completion.model == "claude-haiku-4-5-20251001"


def test_json_mode_tool_input_becomes_the_content_with_finish_stop():
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": {"type": "object"}}}}
    answer = parse(
        [{"type": "tool_use", "id": "toolu_1", "name": "place", "input": {"city": "Paris"}}], "tool_use", body
    )
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": '{"city": "Paris"}'}
    assert answer["choices"][0]["finish_reason"] == "stop"
    wrapped = {"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "array"}}}}
    answer = parse(
        [{"type": "tool_use", "id": "toolu_2", "name": "t", "input": {"value": [1, 2]}}], "tool_use", wrapped
    )
    assert answer["choices"][0]["message"]["content"] == "[1,2]"


def test_a_body_that_is_not_a_message_is_a_malformed_response():
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse_response(PROVIDER, call({}), b"<html>oops</html>")
    assert info.value.code == "upstream_malformed_response" and info.value.status == 502


# --- errors ----------------------------------------------------------------------------------------------------


def anthropic_error(type_: str, message: str) -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    ).encode()


@pytest.mark.parametrize(
    "status, type_, mapped, code, retryable",
    [
        (400, "invalid_request_error", 400, "upstream_bad_request", False),
        (401, "authentication_error", 502, "upstream_auth_failed", False),
        (402, "billing_error", 502, "upstream_billing", False),
        (403, "permission_error", 502, "upstream_forbidden", False),
        (404, "not_found_error", 404, "upstream_not_found", False),
        (413, "request_too_large", 413, "upstream_request_too_large", False),
        (429, "rate_limit_error", 429, "upstream_rate_limited", True),
        (500, "api_error", 502, "upstream_server_error", True),
        (529, "overloaded_error", 503, "upstream_overloaded", True),
    ],
)
def test_error_statuses_map_to_gateway_statuses(status, type_, mapped, code, retryable):
    error = ADAPTER.parse_error(PROVIDER, status, anthropic_error(type_, "Something specific"), {"retry-after": "7"})
    assert (error.status, error.code, error.retryable) == (mapped, code, retryable)
    if status not in (401, 403):
        assert "Something specific" in error.message
    assert KEY not in error.message
    assert (("retry-after", "7") in error.headers) == (mapped in (429, 503))


# --- streams ---------------------------------------------------------------------------------------------------


def sse_bytes(events: list[tuple[str, str]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {data}\n\n".encode() for name, data in events)


BASIC_STREAM = sse_bytes(
    [
        (
            "message_start",
            '{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-20250514", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}',
        ),
        (
            "content_block_start",
            '{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}',
        ),
        ("ping", '{"type": "ping"}'),
        (
            "content_block_delta",
            '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}',
        ),
        (
            "content_block_delta",
            '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}',
        ),
        ("content_block_stop", '{"type": "content_block_stop", "index": 0}'),
        (
            "message_delta",
            '{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}',
        ),
        ("message_stop", '{"type": "message_stop"}'),
    ]
)

_TEXT = ["Okay", ",", " let", "'s", " check", " the", " weather", " for", " San", " Francisco", ",", " CA", ":"]
_ARGS = ["", '{"location":', ' "San', " Francisc", "o,", ' CA"', ", ", '"unit": "fah', 'renheit"}']
TOOL_STREAM = sse_bytes(
    [
        (
            "message_start",
            '{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-20250514","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}',
        ),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        ("ping", '{"type": "ping"}'),
    ]
    + [
        (
            "content_block_delta",
            json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
        )
        for t in _TEXT
    ]
    + [
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        (
            "content_block_start",
            '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}',
        ),
    ]
    + [
        (
            "content_block_delta",
            json.dumps(
                {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": a}}
            ),
        )
        for a in _ARGS
    ]
    + [
        ("content_block_stop", '{"type":"content_block_stop","index":1}'),
        (
            "message_delta",
            '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}',
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]
)

_STEPS = [
    "Let me solve this step by step:\n\n1. First break down 27 * 453",
    "\n2. 453 = 400 + 50 + 3",
    "\n3. 27 * 400 = 10,800",
    "\n4. 27 * 50 = 1,350",
    "\n5. 27 * 3 = 81",
    "\n6. 10,800 + 1,350 + 81 = 12,231",
]
THINKING_STREAM = sse_bytes(
    [
        (
            "message_start",
            '{"type": "message_start", "message": {"id": "msg_01...", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-20250514", "stop_reason": null, "stop_sequence": null}}',
        ),
        (
            "content_block_start",
            '{"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}',
        ),
    ]
    + [
        (
            "content_block_delta",
            json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": s}}),
        )
        for s in _STEPS
    ]
    + [
        (
            "content_block_delta",
            '{"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}',
        ),
        ("content_block_stop", '{"type": "content_block_stop", "index": 0}'),
        (
            "content_block_start",
            '{"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}',
        ),
        (
            "content_block_delta",
            '{"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"}}',
        ),
        ("content_block_stop", '{"type": "content_block_stop", "index": 1}'),
        ("message_delta", '{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}}'),
        ("message_stop", '{"type": "message_stop"}'),
    ]
)

OVERLOADED_EVENT = sse_bytes(
    [("error", '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}')]
)


def translate(
    stream: bytes, body: dict | None = None, pieces: list[bytes] | None = None
) -> tuple[list[dict], AnthropicStream]:
    translator = ADAPTER.stream_translator(PROVIDER, call({"stream": True, **(body or {})}))
    parser = SSEParser()
    out: list[bytes] = []
    for piece in pieces if pieces is not None else [stream]:
        for event in parser.feed(piece):
            out.extend(translator.feed(event))
    for event in parser.close():
        out.extend(translator.feed(event))
    out.extend(translator.close())
    return [json.loads(chunk) for chunk in out], translator


def deltas(chunks: list[dict]) -> list[dict]:
    return [c["choices"][0]["delta"] for c in chunks]


def test_basic_stream_translates_to_openai_chunks():
    chunks, translator = translate(BASIC_STREAM)
    assert deltas(chunks) == [{"role": "assistant", "content": "Hello"}, {"content": "!"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    assert {c["model"] for c in chunks} == {"claude-opus-4-20250514"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["created"] for c in chunks}) == 1
    assert all(c.get("usage") is None for c in chunks)  # usage is Dispatch's to send
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens, translator.usage.total_tokens) == (
        25,
        15,
        40,
    )
    assert translator.id == "chatcmpl-msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
    assert translator.model == "claude-opus-4-20250514"


def test_tool_use_stream_gives_the_call_header_then_argument_fragments():
    chunks, translator = translate(TOOL_STREAM)
    tool_deltas = [d["tool_calls"] for d in deltas(chunks) if "tool_calls" in d]
    assert tool_deltas[0] == [
        {
            "index": 0,
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    assert all(set(d[0]) == {"index", "function"} and set(d[0]["function"]) == {"arguments"} for d in tool_deltas[1:])
    arguments = "".join(d[0]["function"]["arguments"] for d in tool_deltas)
    assert json.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    text = "".join(d.get("content") or "" for d in deltas(chunks))
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    assert deltas(chunks)[0]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (472, 89)


def test_thinking_stream_gives_reasoning_deltas_and_no_signature():
    chunks, _ = translate(THINKING_STREAM, {"reasoning_effort": "high"})
    reasoning = "".join(d.get("reasoning") or "" for d in deltas(chunks))
    assert reasoning == "".join(_STEPS)
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "27 * 453 = 12,231"
    assert deltas(chunks)[0] == {"role": "assistant", "reasoning": _STEPS[0]}
    assert "EqQB" not in json.dumps(chunks)
    hidden, _ = translate(THINKING_STREAM, {"reasoning": {"effort": "high", "exclude": True}})
    assert not any("reasoning" in d for d in deltas(hidden))


def test_stream_usage_keeps_cache_counts_and_takes_cumulative_message_delta_counts():
    stream = sse_bytes(
        [
            (
                "message_start",
                '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-haiku-4-5-20251001","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":100,"cache_creation_input_tokens":200,"cache_read_input_tokens":1000,"output_tokens":1}}}',
            ),
            (
                "content_block_start",
                '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
            ),
            (
                "content_block_delta",
                '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}',
            ),
            ("content_block_stop", '{"type":"content_block_stop","index":0}'),
            (
                "message_delta",
                '{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":50}}',
            ),
            ("message_stop", '{"type":"message_stop"}'),
        ]
    )
    chunks, translator = translate(stream)
    usage = translator.usage
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.completion_tokens) == (
        1300,
        1000,
        200,
        50,
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    newer = stream.replace(
        b'"usage":{"output_tokens":50}',
        b'"usage":{"input_tokens":100,"cache_creation_input_tokens":0,"cache_read_input_tokens":1200,"output_tokens":50}',
    )
    _, translator = translate(newer)
    assert (translator.usage.prompt_tokens, translator.usage.cached_tokens, translator.usage.cache_write_tokens) == (
        1300,
        1200,
        0,
    )


def test_parallel_tool_calls_are_indexed_among_tool_calls_and_empty_inputs_become_braces():
    stream = sse_bytes(
        [
            (
                "message_start",
                '{"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","content":[],"model":"claude-haiku-4-5-20251001","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}',
            ),
            (
                "content_block_start",
                '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
            ),
            (
                "content_block_delta",
                '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Two calls."}}',
            ),
            ("content_block_stop", '{"type":"content_block_stop","index":0}'),
            (
                "content_block_start",
                '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"get_time","input":{}}}',
            ),
            (
                "content_block_delta",
                '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}',
            ),
            ("content_block_stop", '{"type":"content_block_stop","index":1}'),
            (
                "content_block_start",
                '{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"get_weather","input":{}}}',
            ),
            (
                "content_block_delta",
                '{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\": \\"Rome\\"}"}}',
            ),
            ("content_block_stop", '{"type":"content_block_stop","index":2}'),
            (
                "message_delta",
                '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":30}}',
            ),
            ("message_stop", '{"type":"message_stop"}'),
        ]
    )
    chunks, _ = translate(stream)
    calls: dict[int, dict] = {}
    for delta in deltas(chunks):
        for part in delta.get("tool_calls", ()):
            entry = calls.setdefault(
                part["index"], {"id": part.get("id"), "name": part["function"].get("name"), "args": ""}
            )
            entry["args"] += part["function"].get("arguments") or ""
    assert calls == {
        0: {"id": "toolu_a", "name": "get_time", "args": "{}"},
        1: {"id": "toolu_b", "name": "get_weather", "args": '{"location": "Rome"}'},
    }


def test_json_mode_stream_gives_the_tool_input_as_content():
    stream = TOOL_STREAM.replace(b'"get_weather"', b'"weather"')
    chunks, _ = translate(
        stream,
        {"response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": {"type": "object"}}}},
    )
    content = "".join(d.get("content") or "" for d in deltas(chunks))
    assert content.endswith('{"location": "San Francisco, CA", "unit": "fahrenheit"}')
    assert not any("tool_calls" in d for d in deltas(chunks))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_an_error_event_raises_like_its_http_status():
    translator = ADAPTER.stream_translator(PROVIDER, call({"stream": True}))
    events = SSEParser().feed(BASIC_STREAM.split(b"event: content_block_start")[0] + OVERLOADED_EVENT)
    assert translator.feed(events[0]) == []
    with pytest.raises(UpstreamError) as info:
        translator.feed(events[1])
    assert (info.value.status, info.value.code, info.value.retryable) == (503, "upstream_overloaded", True)
    assert info.value.message == "Provider 'anthropic' reported overloaded_error: Overloaded"


def test_a_stream_without_message_stop_is_a_cut():
    cut = BASIC_STREAM.split(b"event: message_stop")[0]
    with pytest.raises(UpstreamError) as info:
        translate(cut)
    assert info.value.code == "upstream_stream_cut"


def test_pings_and_unknown_events_are_ignored():
    translator = ADAPTER.stream_translator(PROVIDER, call({"stream": True}))
    assert translator.feed(SSEEvent(data=b'{"type": "ping"}', event="ping")) == []
    assert translator.feed(SSEEvent(data=b'{"type": "future_event", "x": 1}', event="future_event")) == []


def _without_created(chunks: list[dict]) -> list[dict]:
    return [{k: v for k, v in chunk.items() if k != "created"} for chunk in chunks]


RECORDED = [BASIC_STREAM, TOOL_STREAM, THINKING_STREAM]
EXPECTED = [_without_created(translate(stream, {"reasoning_effort": "high"})[0]) for stream in RECORDED]


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(RECORDED) - 1), cuts=st.lists(st.integers(0, 10_000), max_size=40), crlf=st.booleans())
def test_any_split_of_a_recorded_stream_yields_the_same_chunks(which, cuts, crlf):
    stream = RECORDED[which].replace(b"\n", b"\r\n") if crlf else RECORDED[which]
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=False)]
    chunks, _ = translate(stream, {"reasoning_effort": "high"}, pieces)
    assert _without_created(chunks) == EXPECTED[which]


# --- end to end: openai SDK -> mux -> fake Anthropic ------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_server():
    fake = FakeAnthropic(api_key=KEY)
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="module")
def anthropic_app(fake_server):
    config = {
        "providers": [
            {"name": "anthropic", "type": "anthropic", "base_url": fake_server.url, "api_key": KEY, "timeout_s": 10}
        ]
    }
    return mux.build_app(mux.parse_config(config))


@pytest.fixture(scope="module")
def anthropic_url(anthropic_app):
    with serve(anthropic_app) as url:
        yield url


@pytest.fixture
def fake(fake_server, anthropic_app):
    """The module's fake, with no records or script, behind a gateway with no breaker history (the error tests
    fail on purpose; one test's failures must not open the breaker for the next)."""
    fake_server.reset()
    anthropic_app.routing.health.targets.clear()
    yield fake_server
    fake_server.reset()


@pytest.fixture(scope="module")
def sdk(anthropic_url):
    client = openai.OpenAI(base_url=anthropic_url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)
    yield client
    client.close()


def _post(fake: FakeAnthropic, body: dict, headers: dict | None = None) -> httpx.Response:
    sent = {"x-api-key": KEY, "anthropic-version": "2023-06-01"} if headers is None else headers
    return httpx.post(fake.url + "/v1/messages", json=body, headers=sent, timeout=5)


def _ok(**extra: Any) -> dict:
    return {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": HELLO, **extra}


_TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}
_TOOL_RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}


@pytest.mark.parametrize(
    "body, headers, status, message",
    [
        (_ok(), {"anthropic-version": "2023-06-01"}, 401, "x-api-key header is required"),
        (_ok(), {"x-api-key": "sk-wrong", "anthropic-version": "2023-06-01"}, 401, "invalid x-api-key"),
        (_ok(), {"x-api-key": KEY}, 400, "anthropic-version: header is required"),
        ({"model": "claude-haiku-4-5", "messages": HELLO}, None, 400, "max_tokens: Field required"),
        (_ok(n=1), None, 400, "n: Extra inputs are not permitted"),
        (_ok(model="claude-nope"), None, 404, "model: claude-nope"),
        (_ok(max_tokens=70000), None, 400, "maximum allowed number of output tokens"),
        (_ok(temperature=1.5), None, 400, "temperature"),
        (
            _ok(messages=[{"role": "system", "content": "x"}, *HELLO]),
            None,
            400,
            "Input should be 'user' or 'assistant'",
        ),
        (_ok(messages=[{"role": "assistant", "content": "x"}, *HELLO]), None, 400, "first message must use the"),
        (
            _ok(
                messages=[*HELLO, _TOOL_USE, {"role": "user", "content": "next"}],
                tools=[{"name": "f", "input_schema": {"type": "object"}}],
            ),
            None,
            400,
            "without `tool_result` blocks",
        ),
        (
            _ok(messages=[*HELLO, {"role": "assistant", "content": "hi"}, _TOOL_RESULT]),
            None,
            400,
            "unexpected `tool_use_id`",
        ),
        (
            _ok(
                messages=[
                    *HELLO,
                    _TOOL_USE,
                    {"role": "user", "content": [{"type": "text", "text": "first"}, *_TOOL_RESULT["content"]]},
                ]
            ),
            None,
            400,
            "must come first",
        ),
        (
            _ok(
                max_tokens=4096,
                thinking={"type": "enabled", "budget_tokens": 2048},
                tool_choice={"type": "any"},
                tools=[{"name": "f", "input_schema": {"type": "object"}}],
            ),
            None,
            400,
            "forces tool use",
        ),
        (_ok(metadata={"user_id": "u", "team": "a"}), None, 400, "metadata.team: Extra inputs are not permitted"),
    ],
)
def test_fake_is_as_strict_as_the_messages_api(fake, body, headers, status, message):
    response = _post(fake, body, headers)
    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error" and message in error["error"]["message"]


def test_fake_merges_consecutive_turns_like_the_api(fake):
    response = _post(fake, _ok(messages=[*HELLO, {"role": "user", "content": "again"}]))
    assert response.status_code == 200 and response.json()["content"][0]["text"] == "You said: again"


def test_fake_streams_what_the_anthropic_sdk_parses(fake):
    import anthropic

    fake.script(
        Reply(
            blocks=[Thinking("Hmm."), Text("The answer."), ToolUse("f", {"a": [1, 2]}, id="toolu_x")],
            usage={"input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 11},
        )
    )
    with anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0) as client:
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=HELLO,
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
        ) as stream:
            message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "Hmm." and message.content[1].text == "The answer."
    assert message.content[2].input == {"a": [1, 2]} and message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        7,
        3,
        11,
    )


def test_e2e_plain_completion(sdk, fake):
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    answer = raw.parse()
    assert answer.choices[0].message.content == "You said: Hello"
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason == "stop"
    assert answer.model == "claude-haiku-4-5-20251001" and answer.id.startswith("chatcmpl-msg_")
    assert raw.headers["x-mux-provider"] == "anthropic"
    sent = fake.last
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers and CLIENT_KEY not in json.dumps(sent.headers)
    assert sent.body == {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 64000,
    }


def test_e2e_system_content_parts_reach_anthropic_as_one_text_block_each(sdk, fake):
    sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
            {"role": "developer", "content": "C"},
            *HELLO,
        ],
    )

    assert fake.last.body["system"] == [
        {"type": "text", "text": "A"},
        {"type": "text", "text": "B"},
        {"type": "text", "text": "C"},
    ]


def test_fake_refuses_system_blocks_that_are_not_text_blocks(fake):
    for system, wording in (
        ([{"type": "text", "text": "A"}, "B"], "system.1: Input should be a valid dictionary"),
        ([{"type": "image", "source": {}}], "does not match any of the expected tags: 'text'"),
        ([{"type": "text", "text": " "}], "text content blocks must contain non-whitespace"),
        ({"text": "A"}, "system: Input should be a valid string or list"),
    ):
        response = _post(fake, _ok(system=system))
        assert response.status_code == 400 and wording in response.json()["error"]["message"]
    assert _post(fake, _ok(system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}])).is_success


def test_e2e_bare_claude_model_name_routes_to_anthropic(sdk, fake):
    answer = sdk.chat.completions.create(model="claude-3-5-haiku-latest", messages=HELLO, max_tokens=100)
    assert answer.model == "claude-3-5-haiku-20241022"
    assert fake.last.body["model"] == "claude-3-5-haiku-latest" and fake.last.body["max_tokens"] == 100


def test_e2e_system_prompt_and_multi_turn_history(sdk, fake):
    sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What is 2+2?"},
        ],
        user="end-user-9",
        seed=3,
        presence_penalty=0.2,
        extra_body={"mlx:tags": {"team": "a"}},
    )
    body = fake.last.body
    assert body["system"] == "You are terse."
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert body["metadata"] == {"user_id": "end-user-9"}
    assert not {"seed", "presence_penalty", "mlx:tags", "user"} & set(body)


def test_e2e_tool_call_not_streamed(sdk, fake):
    fake.script(Reply(blocks=[ToolUse("get_weather", {"location": "Paris"}, id="toolu_01A09q90qw90lq917835lq9")]))
    answer = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].id == "toolu_01A09q90qw90lq917835lq9"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"location": "Paris"}
    assert fake.last.body["tool_choice"] == {"type": "any"}


def test_e2e_streamed_parallel_tool_calls_reassemble(sdk, fake):
    fake.script(
        Reply(
            blocks=[
                Text("Checking both."),
                ToolUse("get_weather", {"location": "Paris, France"}),
                ToolUse("get_time", {"tz": "Europe/Paris"}),
            ]
        )
    )
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather and time?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        stream=True,
    )
    calls: dict[int, dict] = {}
    text, finish, first = "", None, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        first = first or delta.role
        text += delta.content or ""
        for part in delta.tool_calls or ():
            entry = calls.setdefault(part.index, {"id": part.id, "name": part.function.name, "args": ""})
            entry["args"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert first == "assistant" and text == "Checking both." and finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["args"]) == {"location": "Paris, France"}
    assert json.loads(calls[1]["args"]) == {"tz": "Europe/Paris"}
    assert all(c["id"].startswith("toolu_") for c in calls.values())
    assert fake.last.body["stream"] is True


def test_e2e_tool_results_round_trip_in_one_user_turn(sdk, fake):
    fake.script(
        Reply(blocks=[ToolUse("get_weather", {"location": "Paris"}), ToolUse("get_weather", {"location": "Rome"})])
    )
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    first = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    calls = first.choices[0].message.tool_calls
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": f"{c.id}: 20C"} for c in calls]
    fake.script(Reply(blocks=[Text("Both 20C.")]))
    second = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "Both 20C."
    sent = fake.last.body["messages"]
    assert [t["role"] for t in sent] == ["user", "assistant", "user"]
    assert [b["id"] for b in sent[1]["content"]] == [c.id for c in calls]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": c.id, "content": f"{c.id}: 20C"} for c in calls
    ]


def test_e2e_image_data_url(sdk, fake):
    sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
                ],
            }
        ],
    )
    assert fake.last.body["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX},
    }


def test_e2e_json_object_answers_parseable_json(sdk, fake):
    answer = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "JSON please"}], response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls


def _matches(schema: dict, value: Any) -> bool:
    kind = schema.get("type")
    if kind == "object":
        return (
            isinstance(value, dict)
            and all(k in value for k in schema.get("required", ()))
            and all(_matches(schema["properties"][k], v) for k, v in value.items() if k in schema.get("properties", {}))
        )
    if kind == "array":
        return isinstance(value, list) and all(_matches(schema.get("items", {}), v) for v in value)
    return {"string": str, "integer": int, "number": (int, float), "boolean": bool}.get(kind, object) and isinstance(
        value, {"string": str, "integer": int, "number": (int, float), "boolean": bool}.get(kind, object)
    )


CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "population", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
def test_e2e_json_schema_answers_an_instance_of_the_schema(sdk, fake, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "city_info", "schema": CITY_SCHEMA, "strict": True}}
    if stream:
        chunks = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Paris"}], response_format=fmt, stream=True
        )
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
    else:
        content = (
            sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Paris"}], response_format=fmt
            )
            .choices[0]
            .message.content
        )
    value = json.loads(content)
    assert _matches(CITY_SCHEMA, value) and set(value) == {"city", "population", "tags"}
    assert fake.last.body["tool_choice"] == {"type": "tool", "name": "city_info"}


def test_e2e_reasoning_comes_back_as_message_reasoning(sdk, fake):
    fake.script(Reply(blocks=[Thinking("27 * 453: 27*400 + 27*53 = 12,231"), Text("12,231")]))
    answer = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "27 * 453?"}], reasoning_effort="low", temperature=0.5
    )
    assert answer.choices[0].message.content == "12,231"
    assert answer.choices[0].message.reasoning == "27 * 453: 27*400 + 27*53 = 12,231"
    body = fake.last.body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and "temperature" not in body


def test_e2e_reasoning_streams_as_delta_reasoning(sdk, fake):
    fake.script(Reply(blocks=[Thinking("Adding the numbers carefully."), Text("4")]))
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "2+2?"}], reasoning_effort="medium", stream=True
        )
    )
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks)
    assert reasoning == "Adding the numbers carefully."
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "4"


@pytest.mark.parametrize("stream", [False, True])
def test_e2e_stop_sequence_and_max_tokens_finish_reasons(sdk, fake, stream):
    fake.script(
        Reply(blocks=[Text("one two")], stop_reason="stop_sequence", stop_sequence="three"),
        Reply(blocks=[Text("a long")], stop_reason="max_tokens"),
    )
    finishes = []
    for extra in ({"stop": ["three"]}, {"max_tokens": 2}):
        if stream:
            chunks = list(sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True, **extra))
            finishes.append(chunks[-1].choices[0].finish_reason)
        else:
            finishes.append(sdk.chat.completions.create(model=MODEL, messages=HELLO, **extra).choices[0].finish_reason)
    assert finishes == ["stop", "length"]
    assert fake.requests[0].body["stop_sequences"] == ["three"] and fake.requests[1].body["max_tokens"] == 2


@pytest.mark.parametrize(
    "status, gateway_status, exception",
    [
        (400, 400, openai.BadRequestError),
        (401, 502, openai.InternalServerError),
        (403, 502, openai.InternalServerError),
        (404, 404, openai.NotFoundError),
        (413, 413, openai.APIStatusError),
        (429, 429, openai.RateLimitError),
        (500, 502, openai.InternalServerError),
        (529, 503, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_e2e_upstream_error_statuses_map_to_gateway_statuses(sdk, fake, status, gateway_status, exception, stream):
    fake.script(Reply(status=status))
    with pytest.raises(exception) as info:
        result = sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=stream)
        if stream:
            list(result)
    assert info.value.status_code == gateway_status
    error = info.value.body
    assert KEY not in json.dumps(error)
    if status in (400, 404, 429, 529):
        assert error["message"].startswith("Provider 'anthropic' answered HTTP")
    if status == 429:
        assert info.value.response.headers["retry-after"] == "17"


def test_e2e_gateway_refusals_never_reach_upstream(sdk, fake):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=MODEL, messages=HELLO, n=2)
    assert info.value.body["param"] == "n" and fake.requests == []


def test_e2e_overloaded_before_any_content_is_a_503(sdk, fake):
    fake.script(Reply(error_after=1))
    with pytest.raises(openai.InternalServerError) as info:
        list(sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    assert info.value.status_code == 503 and info.value.body["code"] == "upstream_overloaded"


def test_e2e_error_event_mid_stream_ends_the_stream_with_an_error(anthropic_url, fake):
    fake.script(Reply(blocks=[Text("one two three four five six")], error_after=5, event_delay_s=0.05))
    with httpx.stream(
        "POST",
        anthropic_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO, "stream": True},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=10,
    ) as response:
        text = response.read().decode()
    assert response.status_code == 200
    assert '"content":"one two"' in text.replace(" ", "") or "one two" in text
    assert '"code":"upstream_overloaded"' in text and "[DONE]" not in text


def test_e2e_cut_stream_makes_the_openai_sdk_raise(sdk, fake):
    fake.script(Reply(blocks=[Text("one two three four five six")], cut_after=5, event_delay_s=0.05))
    seen = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
            seen += chunk.choices[0].delta.content or ""
    assert seen == "one two three four" and not isinstance(info.value, openai.APIStatusError)


def test_e2e_usage_and_cost_count_cache_reads_and_writes(sdk, fake):
    usage = {
        "input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 50,
    }
    fake.script(Reply(blocks=[Text("cached")], usage=usage))
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    answer = raw.parse()
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (1300, 50, 1350)
    assert answer.usage.prompt_tokens_details.cached_tokens == 1000
    assert answer.usage.prompt_tokens_details.cache_write_tokens == 200
    # claude-haiku-4-5: $1 input, $0.10 cache read, $1.25 cache write, $5 output per million tokens
    expected = (100 * 1.00 + 1000 * 0.10 + 200 * 1.25 + 50 * 5.00) / 1_000_000
    assert float(raw.headers["x-mux-cost-usd"]) == pytest.approx(expected)
    assert answer.usage.cost == pytest.approx(expected)


def test_e2e_streamed_usage_chunk_carries_cache_counts_and_cost(sdk, fake):
    usage = {"input_tokens": 10, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 0, "output_tokens": 20}
    fake.script(Reply(blocks=[Text("hi")], usage=usage))
    chunks = list(
        sdk.chat.completions.create(
            model="claude-haiku-4-5", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    final = chunks[-1]
    assert final.choices == [] and final.usage.prompt_tokens == 2010 and final.usage.completion_tokens == 20
    assert final.usage.prompt_tokens_details.cached_tokens == 2000
    assert final.usage.cost == pytest.approx((10 * 1.00 + 2000 * 0.10 + 20 * 5.00) / 1_000_000)
    assert sum(1 for c in chunks if c.usage is not None) == 1
