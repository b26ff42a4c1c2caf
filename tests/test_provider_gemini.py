"""The Gemini adapter: pure translation (request, schema conversion, response, stream, errors) and end to end with
the official ``openai`` SDK -> mux gateway -> a strict fake of the Gemini Developer API.

Recorded payloads below are shortened copies of real ``gemini-2.5-flash`` answers published in
junjihashimoto/louter (test-data/gemini/streaming_long/response.json and streaming_function_calling/
response_0.json: every chunk carries ``usageMetadata`` with ``promptTokensDetails`` and ``thoughtsTokenCount``,
``modelVersion`` and ``responseId``; a function call arrives whole with a ``thoughtSignature`` and a
``finishMessage``), re-framed with the CRLF line ends the real ``alt=sse`` endpoint uses (Routstr/routstr-core
tests/unit/test_streaming_sse_providers.py ``test_gemini_crlf_framing``; nyroway/nyro#265). Error bodies are
Google's as reported verbatim in public issues (continuedev/continue#8516, PublicAffairs/openai-gemini#92).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mux
from mux.catalog.prices import PRICES
from mux.config import ProviderConfig
from mux.errors import InvalidRequest, UpstreamError
from mux.providers import ADAPTERS
from mux.providers.base import Call
from mux.providers.gemini import ADAPTER, GeminiStream, call_id, signature_of
from mux.providers.gemini_schema import SCHEMA_FIELDS, convert_schema
from mux.routing.plan import Resolver
from mux.sse import SSEEvent, SSEParser
from mux.wire import decode_request
from tests.fakes.gemini_upstream import (
    API_KEY,
    SCHEMA_KEYWORDS,
    FakeGemini,
    Reply,
    error_body,
    schema_errors,
    semantic_errors,
    shape_errors,
)
from tests.servers import serve

PROVIDER = ProviderConfig(
    name="gemini",
    type="gemini",
    base_url="https://generativelanguage.googleapis.com",
    api_key="AIzaSyTEST-provider-key",
)
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()


def call_for(body: dict[str, Any], model: str = "gemini-2.5-flash") -> Call:
    request, fields = decode_request(json.dumps(body).encode())
    return Call(request=request, fields=fields, model=model)


def built(body: dict[str, Any], model: str = "gemini-2.5-flash") -> dict[str, Any]:
    upstream = ADAPTER.build_request(PROVIDER, call_for(body, model))
    sent = json.loads(upstream.body)
    assert shape_errors(sent) == [] and semantic_errors(sent) == [], "the fake would refuse what mux sends"
    return sent


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- request translation -------------------------------------------------------------------------------------


def test_request_goes_to_generate_content_with_the_key_in_a_header_never_the_url():
    upstream = ADAPTER.build_request(PROVIDER, call_for({"model": "x", "messages": [user()]}))
    assert upstream.method == "POST"
    assert upstream.url == ("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent")
    assert upstream.headers["x-goog-api-key"] == PROVIDER.api_key
    assert upstream.headers["content-type"] == "application/json"
    assert PROVIDER.api_key not in upstream.url and "key=" not in upstream.url
    assert json.loads(upstream.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_stream_request_asks_for_sse():
    upstream = ADAPTER.build_request(PROVIDER, call_for({"model": "x", "messages": [user()], "stream": True}))
    assert upstream.url.endswith("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")


def test_system_and_developer_messages_become_the_system_instruction_and_same_role_turns_merge():
    sent = built(
        {
            "model": "x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                user("one"),
                user("two"),
                {"role": "assistant", "content": "un"},
                {"role": "assistant", "content": [{"type": "text", "text": "deux"}]},
                user(""),
                user("three"),
            ],
        }
    )
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]}
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "un"}, {"text": "deux"}]},
        {"role": "user", "parts": [{"text": "three"}]},
    ]


def test_images_become_inline_data_or_file_data_with_a_mime_type():
    sent = built(
        {
            "model": "x",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/photo"}},
                        {"type": "image_url", "image_url": {"url": "data:text/plain,hello%20world"}},
                    ],
                }
            ],
        }
    )
    assert sent["contents"][0]["parts"] == [
        {"text": "what is this?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}},
        {"inlineData": {"mimeType": "text/plain", "data": base64.b64encode(b"hello world").decode()}},
    ]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "strict": True,
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f", None]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def test_tools_become_function_declarations_with_gemini_schemas():
    sent = built({"model": "x", "messages": [user()], "tools": [WEATHER, TIME]})
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather now",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {
                            "city": {"type": "STRING"},
                            "unit": {"type": "STRING", "enum": ["c", "f"], "nullable": True},
                        },
                        "required": ["city", "unit"],
                    },
                },
                {"name": "get_time"},  # no arguments: no parameters (an OBJECT without properties is not sent)
            ]
        }
    ]
    assert "toolConfig" not in sent
    assert ADAPTER.dropped_keywords(call_for({"model": "x", "messages": [user()], "tools": [WEATHER]})) == [
        "tools[0].function: strict",
        "tools[0].function.parameters: additionalProperties",
    ]


@pytest.mark.parametrize(
    "choice, config",
    [
        ("none", {"mode": "NONE"}),
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice_becomes_a_function_calling_mode(choice, config):
    sent = built({"model": "x", "messages": [user()], "tools": [WEATHER, TIME], "tool_choice": choice})
    assert sent["toolConfig"] == {"functionCallingConfig": config}


def test_allowed_tools_in_auto_mode_declares_only_the_allowed_functions():
    sent = built(
        {
            "model": "x",
            "messages": [user()],
            "tools": [WEATHER, TIME],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "get_time"}}]},
            },
        }
    )
    assert [d["name"] for d in sent["tools"][0]["functionDeclarations"]] == ["get_time"]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_custom_tools_are_refused_with_the_parameter_named():
    with pytest.raises(InvalidRequest) as exc:
        ADAPTER.build_request(
            PROVIDER,
            call_for(
                {"model": "x", "messages": [user()], "tools": [{"type": "custom", "custom": {"name": "grammar"}}]}
            ),
        )
    assert exc.value.param == "tools[0]"


def test_tool_calls_and_results_round_trip_with_names_recovered_and_signatures_restored():
    signed = call_id(0, "get_weather", {"city": "Paris"}, signature="c2lnbmF0dXJl")
    plain = call_id(1, "get_time", {})
    sent = built(
        {
            "model": "x",
            "messages": [
                user("weather and time in Paris?"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": signed,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {"id": plain, "type": "function", "function": {"name": "get_time", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": signed, "content": '{"temp_c": 21}'},
                {"role": "tool", "tool_call_id": plain, "content": "12:00"},
                {"role": "tool", "tool_call_id": plain, "content": [{"type": "text", "text": "[1, 2]"}]},
            ],
        }
    )
    assert sent["contents"][1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"},
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert sent["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
            {"functionResponse": {"name": "get_time", "response": {"output": [1, 2]}}},
        ],
    }
    assert signature_of(signed) == "c2lnbmF0dXJl" and signature_of(plain) is None


def test_a_tool_result_without_its_call_is_refused_naming_the_message():
    with pytest.raises(InvalidRequest) as exc:
        ADAPTER.build_request(
            PROVIDER,
            call_for(
                {"model": "x", "messages": [user(), {"role": "tool", "tool_call_id": "call_nope", "content": "1"}]}
            ),
        )
    assert exc.value.param == "messages[1].tool_call_id"


def test_tool_call_arguments_that_are_not_a_json_object_are_refused():
    with pytest.raises(InvalidRequest) as exc:
        ADAPTER.build_request(
            PROVIDER,
            call_for(
                {
                    "model": "x",
                    "messages": [
                        user(),
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                            ],
                        },
                    ],
                }
            ),
        )
    assert exc.value.param == "messages[1].tool_calls[0].function.arguments"


def test_sampling_parameters_go_to_generation_config():
    sent = built(
        {
            "model": "x",
            "messages": [user()],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 50,
            "max_completion_tokens": 70,
            "stop": "END",
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logprobs": True,
            "top_logprobs": 3,
            "user": "u1",
        }
    )
    assert sent["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 70,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "responseLogprobs": True,
        "logprobs": 3,
    }


def test_json_object_and_json_schema_set_the_response_mime_type_and_a_converted_schema():
    sent = built({"model": "x", "messages": [user()], "response_format": {"type": "json_object"}})
    assert sent["generationConfig"] == {"responseMimeType": "application/json"}
    schema = {
        "type": "object",
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "email": {"type": "string", "format": "email"},
        },
        "required": ["when", "email"],
    }
    body = {
        "model": "x",
        "messages": [user()],
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": schema}},
    }
    sent = built(body)
    assert sent["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {"when": {"type": "STRING", "format": "date-time"}, "email": {"type": "STRING"}},
            "required": ["when", "email"],
        },
    }
    assert sorted(ADAPTER.dropped_keywords(call_for(body))) == [
        "response_format.json_schema.schema.properties.email: format 'email'",
        "response_format.json_schema.schema: $schema",
        "response_format.json_schema.schema: additionalProperties",
    ]


@pytest.mark.parametrize(
    "fields, model, thinking",
    [
        ({"reasoning_effort": "low"}, "gemini-2.5-flash", {"thinkingBudget": 1024, "includeThoughts": True}),
        ({"reasoning_effort": "medium"}, "gemini-2.5-flash", {"thinkingBudget": 8192, "includeThoughts": True}),
        ({"reasoning_effort": "high"}, "gemini-2.5-flash", {"thinkingBudget": 24576, "includeThoughts": True}),
        ({"reasoning_effort": "none"}, "gemini-2.5-flash", {"thinkingBudget": 0}),
        ({"reasoning_effort": "none"}, "gemini-2.5-pro", {"thinkingBudget": 128, "includeThoughts": True}),
        ({"reasoning": {"max_tokens": 2000}}, "gemini-2.5-flash", {"thinkingBudget": 2000, "includeThoughts": True}),
        ({"reasoning": {"effort": "high", "exclude": True}}, "gemini-2.5-flash", {"thinkingBudget": 24576}),
        ({"reasoning": {"enabled": True}}, "gemini-2.5-flash", {"thinkingBudget": -1, "includeThoughts": True}),
        ({"reasoning": {"enabled": False}}, "gemini-2.5-flash", {"thinkingBudget": 0}),
        ({"reasoning_effort": "low"}, "gemini-3-pro-preview", {"thinkingLevel": "low", "includeThoughts": True}),
        ({"reasoning_effort": "high"}, "gemini-3-pro-preview", {"thinkingLevel": "high", "includeThoughts": True}),
    ],
)
def test_reasoning_becomes_a_thinking_config_that_returns_thoughts(fields, model, thinking):
    sent = built({"model": "x", "messages": [user()], **fields}, model)
    assert sent["generationConfig"] == {"thinkingConfig": thinking}


def test_no_reasoning_parameter_sends_no_thinking_config():
    assert "generationConfig" not in built({"model": "x", "messages": [user()]})


# --- schema conversion -----------------------------------------------------------------------------------


def test_schema_refs_are_inlined_and_recursive_refs_become_a_bare_object():
    schema = {
        "$defs": {
            "Address": {"type": "object", "properties": {"city": {"type": "string"}}},
            "Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}},
        },
        "type": "object",
        "properties": {
            "home": {"$ref": "#/$defs/Address", "description": "where"},
            "tree": {"$ref": "#/$defs/Node"},
            "gone": {"$ref": "#/$defs/Missing"},
        },
    }
    converted, dropped = convert_schema(schema, "p")
    assert converted == {
        "type": "OBJECT",
        "properties": {
            "home": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "description": "where"},
            "tree": {"type": "OBJECT", "properties": {"child": {"type": "OBJECT"}}},
            "gone": {},
        },
    }
    assert dropped == [
        "p.properties.tree.properties.child: $ref '#/$defs/Node' (recursive)",
        "p.properties.gone: $ref '#/$defs/Missing' (unresolvable)",
    ]


@pytest.mark.parametrize(
    "schema, converted, dropped",
    [
        ({"const": "fixed"}, {"type": "STRING", "enum": ["fixed"]}, []),
        ({"const": 3}, {}, ["$: const (non-string)"]),
        ({"type": ["integer", "null"]}, {"type": "INTEGER", "nullable": True}, []),
        ({"type": ["string", "integer"]}, {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]}, []),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, {"type": "STRING", "nullable": True}, []),
        (
            {"oneOf": [{"type": "string"}, {"type": "number", "format": "double"}]},
            {"anyOf": [{"type": "STRING"}, {"type": "NUMBER", "format": "double"}]},
            [],
        ),
        (
            {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
                ]
            },
            {
                "type": "OBJECT",
                "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}},
                "required": ["a", "b"],
            },
            [],
        ),
        (
            {"type": "integer", "format": "uint8", "exclusiveMinimum": 0, "multipleOf": 2},
            {"type": "INTEGER"},
            ["$: exclusiveMinimum", "$: multipleOf", "$: format 'uint8'"],
        ),
        ({"type": "integer", "enum": [1, 2]}, {"type": "INTEGER"}, ["$: enum (non-string values)"]),
        (
            {"type": "array"},
            {"type": "ARRAY", "items": {"type": "STRING"}},
            ["$: items (missing; string items assumed)"],
        ),
        (
            {"type": "array", "items": [{"type": "string"}], "uniqueItems": True},
            {"type": "ARRAY", "items": {"type": "STRING"}},
            ["$: items (tuple form)", "$: uniqueItems"],
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "required": ["a", "zzz"],
                "patternProperties": {"^x": {}},
                "x-vendor": 1,
            },
            {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "required": ["a"]},
            ["$: required (names not in properties)", "$: patternProperties", "$: x-vendor"],
        ),
        (
            {
                "type": "string",
                "title": "T",
                "description": "D",
                "default": "x",
                "examples": ["a"],
                "minLength": 1,
                "maxLength": 9,
                "pattern": "^a",
            },
            {
                "type": "STRING",
                "title": "T",
                "description": "D",
                "default": "x",
                "minLength": 1,
                "maxLength": 9,
                "pattern": "^a",
            },
            ["$: examples"],
        ),
        (
            {"type": "object", "properties": {"meta": {"type": "object", "additionalProperties": {"type": "string"}}}},
            {"type": "OBJECT", "properties": {"meta": {"type": "OBJECT"}}},
            ["$.properties.meta: additionalProperties"],
        ),
    ],
)
def test_schema_conversion_rules(schema, converted, dropped):
    result, notes = convert_schema(schema)
    assert (result, sorted(notes)) == (converted, sorted(dropped))


_NAMES = st.sampled_from(["a", "b", "item_id", "$ref"])
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2, allow_nan=False), st.text(max_size=4)
)
_TYPE_NAMES = st.sampled_from(["string", "number", "integer", "boolean", "array", "object", "null", "any", "STRING"])
_LEAF_KEYS = {
    "type": st.one_of(_TYPE_NAMES, st.lists(_TYPE_NAMES, max_size=3)),
    "format": st.sampled_from(["date-time", "email", "uri", "enum", "int32", "int64", "float", "double", "uuid"]),
    "description": st.one_of(st.text(max_size=4), st.integers()),
    "title": _SCALARS,
    "enum": st.lists(_SCALARS, max_size=3),
    "const": _SCALARS,
    "default": _SCALARS,
    "minimum": _SCALARS,
    "maximum": _SCALARS,
    "maxLength": _SCALARS,
    "minItems": _SCALARS,
    "pattern": _SCALARS,
    "$ref": st.sampled_from(
        ["#/$defs/A", "#/$defs/Missing", "#", "#/definitions/B", "other.json#/x", "#/properties/a"]
    ),
    "additionalProperties": st.booleans(),
    "$schema": st.just("https://json-schema.org/draft/2020-12/schema"),
    "strict": st.booleans(),
    "examples": st.lists(_SCALARS, max_size=2),
    "nullable": _SCALARS,
    "x-extra": _SCALARS,
    "uniqueItems": st.booleans(),
    "propertyOrdering": st.lists(_NAMES, max_size=2),
    "required": st.one_of(st.lists(_NAMES, max_size=3), _SCALARS),
    "exclusiveMaximum": _SCALARS,
}


def _schemas() -> st.SearchStrategy[Any]:
    leaf = st.fixed_dictionaries({}, optional=_LEAF_KEYS)
    return st.recursive(
        leaf,
        lambda children: st.one_of(
            st.booleans(),
            st.fixed_dictionaries(
                {},
                optional={
                    **_LEAF_KEYS,
                    "properties": st.one_of(st.dictionaries(_NAMES, children, max_size=3), _SCALARS),
                    "items": st.one_of(children, st.lists(children, max_size=2)),
                    "anyOf": st.lists(children, max_size=3),
                    "oneOf": st.lists(children, max_size=2),
                    "allOf": st.lists(children, max_size=2),
                    "not": children,
                    "$defs": st.dictionaries(st.sampled_from(["A", "B"]), children, max_size=2),
                    "definitions": st.dictionaries(st.sampled_from(["A", "B"]), children, max_size=2),
                    "additionalProperties": st.one_of(st.booleans(), children),
                },
            ),
        ),
        max_leaves=8,
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_schemas())
def test_converted_schemas_never_carry_what_gemini_refuses(schema):
    converted, dropped = convert_schema(schema, "parameters")
    assert schema_errors(converted, "parameters") == []
    assert isinstance(dropped, list) and all(isinstance(d, str) for d in dropped)


def test_the_adapter_and_the_fake_agree_on_the_schema_keywords():
    assert SCHEMA_FIELDS == SCHEMA_KEYWORDS


# --- response translation ------------------------------------------------------------------------------------

THINKING_RESPONSE = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {"text": "**Weighing options**\nThe user wants a haiku.", "thought": True},
                    {"text": "Autumn moonlight—\n"},
                    {"text": "a worm digs silently."},
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 200,
        "candidatesTokenCount": 50,
        "totalTokenCount": 1080,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1000}],
        "thoughtsTokenCount": 30,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "IZI2acSKMoWl0-kPmYj2yQc",
}


def parse(response: dict[str, Any], model: str = "gemini-2.5-flash") -> tuple[dict[str, Any], Any]:
    completion = ADAPTER.parse_response(
        PROVIDER, call_for({"model": "x", "messages": [user()]}, model), json.dumps(response).encode()
    )
    return json.loads(completion.body), completion


def test_response_text_thoughts_and_usage_become_a_chat_completion():
    body, completion = parse(THINKING_RESPONSE, "gemini-2.5-flash-preview")
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-IZI2acSKMoWl0-kPmYj2yQc"
    assert body["model"] == "gemini-2.5-flash" == completion.model
    assert body["choices"] == [
        {
            "index": 0,
            "finish_reason": "stop",
            "logprobs": None,
            "message": {
                "role": "assistant",
                "content": "Autumn moonlight—\na worm digs silently.",
                "tool_calls": None,
                "refusal": None,
                "reasoning": "**Weighing options**\nThe user wants a haiku.",
            },
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 1000,
        "completion_tokens": 80,
        "total_tokens": 1080,
        "prompt_tokens_details": {"cached_tokens": 200},
        "completion_tokens_details": {"reasoning_tokens": 30},
        "cost": None,
    }
    assert completion.usage.cached_tokens == 200 and completion.usage.reasoning_tokens == 30


RECORDED_CALL = {  # junjihashimoto/louter streaming_function_calling/response_0.json, signature shortened
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "functionCall": {"name": "getWeather", "args": {"location": "Tokyo"}},
                        "thoughtSignature": "CikBcsjafFK168IbtVtoxVV0Tsn8O+eU45rzJahzwuKG",
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "finishMessage": "Model generated function call(s).",
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 83,
        "candidatesTokenCount": 14,
        "totalTokenCount": 201,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 83}],
        "thoughtsTokenCount": 104,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "qpc2afWVFJK4vr0Pq6WiyAU",
}


def test_function_calls_become_tool_calls_with_stable_ids_carrying_the_signature():
    response = json.loads(json.dumps(RECORDED_CALL))
    response["candidates"][0]["content"]["parts"].append({"functionCall": {"name": "getTime", "args": {}}})
    body, _ = parse(response)
    again, _ = parse(response)
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert first["type"] == "function" and first["function"] == {
        "name": "getWeather",
        "arguments": '{"location":"Tokyo"}',
    }
    assert (
        first["id"].startswith("call_0_")
        and signature_of(first["id"]) == "CikBcsjafFK168IbtVtoxVV0Tsn8O+eU45rzJahzwuKG"
    )
    assert second["id"].startswith("call_1_") and signature_of(second["id"]) is None
    assert message["tool_calls"] == again["choices"][0]["message"]["tool_calls"]  # deterministic
    assert body["usage"]["completion_tokens"] == 118


def test_an_upstream_function_call_id_is_kept():
    response = json.loads(json.dumps(RECORDED_CALL))
    response["candidates"][0]["content"]["parts"][0]["functionCall"]["id"] = "fc-123"
    del response["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    body, _ = parse(response)
    assert body["choices"][0]["message"]["tool_calls"][0]["id"] == "fc-123"


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("LANGUAGE", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons_map_to_openai(reason, expected):
    candidate: dict[str, Any] = {"index": 0}
    if reason:
        candidate["finishReason"] = reason
    body, _ = parse(
        {
            "candidates": [candidate],
            "usageMetadata": {"promptTokenCount": 18, "totalTokenCount": 18},
            "modelVersion": "gemini-1.5-flash-001",
        }
    )  # generative-ai-js unary-failure-citations.json
    assert body["choices"][0]["finish_reason"] == expected
    assert body["choices"][0]["message"]["content"] == ""


def test_a_blocked_prompt_is_a_content_filter_answer_with_empty_content():
    body, completion = parse({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}})
    assert body["choices"] == [
        {
            "index": 0,
            "finish_reason": "content_filter",
            "logprobs": None,
            "message": {"role": "assistant", "content": "", "tool_calls": None, "refusal": None, "reasoning": None},
        }
    ]
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 0


def test_several_candidates_become_several_choices_with_logprobs():
    body, _ = parse(
        {
            "candidates": [
                {"index": 1, "content": {"parts": [{"text": "B"}]}, "finishReason": "STOP"},
                {
                    "index": 0,
                    "content": {"parts": [{"text": "A"}]},
                    "finishReason": "MAX_TOKENS",
                    "logprobsResult": {
                        "topCandidates": [
                            {
                                "candidates": [
                                    {"token": "A", "logProbability": -0.5},
                                    {"token": "Z", "logProbability": -2},
                                ]
                            }
                        ],
                        "chosenCandidates": [{"token": "A", "logProbability": -0.5}],
                    },
                },
            ]
        }
    )
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "A", "length"),
        (1, "B", "stop"),
    ]
    assert body["choices"][0]["logprobs"]["content"] == [
        {
            "token": "A",
            "logprob": -0.5,
            "bytes": [65],
            "top_logprobs": [
                {"token": "A", "logprob": -0.5, "bytes": [65]},
                {"token": "Z", "logprob": -2.0, "bytes": [90]},
            ],
        }
    ]


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"candidates": 3}', b"{}"])
def test_a_body_that_is_not_a_usable_response_is_an_upstream_error(body):
    with pytest.raises(UpstreamError) as exc:
        ADAPTER.parse_response(PROVIDER, call_for({"model": "x", "messages": [user()]}), body)
    assert exc.value.code == "upstream_malformed_response" and exc.value.retryable


# --- stream translation --------------------------------------------------------------------------------------


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c, ensure_ascii=False).encode() + b"\r\n\r\n" for c in chunks)


_META = {"modelVersion": "gemini-2.5-flash", "responseId": "IZI2acSKMoWl0-kPmYj2yQc"}


def _usage(candidates: int) -> dict[str, Any]:
    return {
        "promptTokenCount": 4,
        "candidatesTokenCount": candidates,
        "totalTokenCount": 2046 + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}],
        "thoughtsTokenCount": 2042,
    }


# louter streaming_long/response.json, shortened, plus the closing chunk that carries the finishReason.
RECORDED_STREAM = sse(
    {
        "candidates": [
            {
                "content": {"parts": [{"text": "Okay, let's create a Tetris game in Python — "}], "role": "model"},
                "index": 0,
            }
        ],
        "usageMetadata": _usage(49),
        **_META,
    },
    {
        "candidates": [
            {"content": {"parts": [{"text": "`curses` is for Unix-like systems."}], "role": "model"}, "index": 0}
        ],
        "usageMetadata": _usage(97),
        **_META,
    },
    {
        "candidates": [
            {
                "content": {"parts": [{"text": "\n```python\nimport curses\n```"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": _usage(146),
        **_META,
    },
)


def translate(pieces: list[bytes], model: str = "gemini-2.5-flash") -> tuple[list[dict[str, Any]], GeminiStream]:
    parser = SSEParser()
    stream = GeminiStream(PROVIDER, model, created=1_700_000_000)
    out: list[bytes] = []
    for piece in pieces:
        for event in parser.feed(piece):
            out.extend(stream.feed(event))
    for event in parser.close():
        out.extend(stream.feed(event))
    out.extend(stream.close())
    return [json.loads(p) for p in out], stream


def test_a_recorded_stream_becomes_openai_chunks_with_usage_kept_back():
    chunks, stream = translate([RECORDED_STREAM])
    base = {
        "id": "chatcmpl-IZI2acSKMoWl0-kPmYj2yQc",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gemini-2.5-flash",
        "usage": None,
    }
    assert chunks == [
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "Okay, let's create a Tetris game in Python — "},
                    "finish_reason": None,
                    "logprobs": None,
                }
            ],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "`curses` is for Unix-like systems."},
                    "finish_reason": None,
                    "logprobs": None,
                }
            ],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "\n```python\nimport curses\n```"},
                    "finish_reason": None,
                    "logprobs": None,
                }
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]},
    ]
    assert all(c["usage"] is None for c in chunks)  # Dispatch sends the usage chunk, never the translator
    usage = stream.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.reasoning_tokens) == (
        4,
        2188,
        2192,
        2042,
    )  # the last chunk's usageMetadata; thoughts are completion tokens
    assert (stream.id, stream.model) == ("chatcmpl-IZI2acSKMoWl0-kPmYj2yQc", "gemini-2.5-flash")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(RECORDED_STREAM)), max_size=30))
def test_any_split_of_a_recorded_stream_yields_the_same_chunks(cuts):
    points = sorted(set(cuts))
    pieces = [RECORDED_STREAM[a:b] for a, b in zip([0, *points], [*points, len(RECORDED_STREAM)], strict=False)]
    assert translate(pieces)[0] == translate([RECORDED_STREAM])[0]


def test_streamed_function_calls_arrive_whole_one_delta_each_then_tool_calls():
    call = json.loads(json.dumps(RECORDED_CALL))
    call["candidates"][0]["content"]["parts"].append({"functionCall": {"name": "getTime", "args": {}}})
    chunks, stream = translate(
        [
            sse(
                {
                    "candidates": [
                        {
                            "content": {"parts": [{"text": "Let me think.", "thought": True}], "role": "model"},
                            "index": 0,
                        }
                    ],
                    **_META,
                },
                call,
            )
        ]
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning": "Let me think."}
    calls = chunks[1]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["type"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "function", "getWeather", '{"location":"Tokyo"}'),
        (1, "function", "getTime", "{}"),
    ]
    non_stream, _ = parse(call)
    assert [c["id"] for c in calls] == [c["id"] for c in non_stream["choices"][0]["message"]["tool_calls"]]
    assert chunks[2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None}
    assert stream.usage.prompt_tokens == 83 and stream.usage.completion_tokens == 118


def test_a_finish_reason_repeated_on_every_chunk_still_finishes_once_at_the_end():
    # generative-ai-js test-utils/mock-responses/streaming-success-search-grounding.txt: STOP on each chunk,
    # then a chunk with grounding metadata only.
    def text(t):
        return {
            "candidates": [{"content": {"parts": [{"text": t}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 8},
        }

    chunks, _ = translate(
        [sse(text("The"), text(" price"), {"candidates": [{"content": {}, "index": 0, "groundingMetadata": {}}]})]
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]


def test_a_stream_blocked_for_safety_finishes_with_content_filter():
    chunks, _ = translate(
        [
            sse(
                {"candidates": [{"content": {"parts": [{"text": "I"}], "role": "model"}, "index": 0}]},
                {"candidates": [{"finishReason": "SAFETY", "index": 0}]},
            )
        ]
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    chunks, stream = translate(
        [sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 3}})]
    )
    assert [c["choices"] for c in chunks] == [
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": "content_filter",
                "logprobs": None,
            }
        ]
    ]
    assert stream.usage.prompt_tokens == 3


def test_a_stream_that_ends_without_a_finish_reason_is_a_cut():
    with pytest.raises(UpstreamError) as exc:
        translate([RECORDED_STREAM.split(b"\r\n\r\n")[0] + b"\r\n\r\n"])
    assert exc.value.code == "upstream_stream_cut"


def test_an_in_band_error_event_raises():
    stream = GeminiStream(PROVIDER, "gemini-2.5-flash")
    with pytest.raises(UpstreamError) as exc:
        stream.feed(SSEEvent(data=json.dumps(error_body(503)).encode()))
    assert "overloaded" in exc.value.message and "UNAVAILABLE" in exc.value.message
    with pytest.raises(UpstreamError) as exc:
        stream.feed(SSEEvent(data=b"{not json"))
    assert exc.value.code == "upstream_malformed_response"


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, mapped, code",
    [
        (400, 400, "upstream_bad_request"),
        (403, 502, "upstream_forbidden"),
        (404, 404, "upstream_not_found"),
        (429, 429, "upstream_rate_limited"),
        (500, 502, "upstream_server_error"),
        (503, 503, "upstream_unavailable"),
    ],
)
def test_google_error_bodies_are_read_and_mapped(status, mapped, code):
    error = ADAPTER.parse_error(PROVIDER, status, json.dumps(error_body(status)).encode(), {})
    assert (error.status, error.code) == (mapped, code)
    if status not in (401, 403):
        assert error_body(status)["error"]["message"][:40] in error.message
        assert error_body(status)["error"]["status"] in error.message


def test_a_json_array_error_body_is_read_and_retry_info_becomes_retry_after():
    error = ADAPTER.parse_error(PROVIDER, 429, json.dumps([error_body(429)]).encode(), {})
    assert "exceeded your current quota" in error.message
    assert error.headers == [("retry-after", "17")]
    error = ADAPTER.parse_error(PROVIDER, 429, json.dumps([error_body(429)]).encode(), {"retry-after": "5"})
    assert error.headers == [("retry-after", "5")]


def test_an_invalid_provider_key_is_the_gateways_problem_not_the_clients():
    body = {
        "error": {
            "code": 400,
            "message": f"API key not valid. Please pass a valid API key. {PROVIDER.api_key}",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ],
        }
    }
    error = ADAPTER.parse_error(PROVIDER, 400, json.dumps(body).encode(), {})
    assert (error.status, error.code) == (502, "upstream_auth_failed")
    assert PROVIDER.api_key not in error.message


# --- registry, routing, prices -------------------------------------------------------------------------------


def test_gemini_is_registered_and_bare_gemini_names_route_to_it():
    assert ADAPTERS["gemini"] is ADAPTER
    assert ADAPTER.env_keys == ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    config = mux.parse_config({"providers": [{"name": "g", "type": "gemini", "api_key": "k"}]})
    assert config.providers[0].base_url == "https://generativelanguage.googleapis.com"
    resolver = Resolver(config)
    target = resolver.resolve("gemini-2.5-flash-lite")
    assert (target.provider.name, target.model) == ("g", "gemini-2.5-flash-lite")
    assert mux.config_from_env({"GOOGLE_API_KEY": "k"}).providers[0].type == "gemini"


@pytest.mark.parametrize(
    "model",
    ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash", "gemini-2.0-flash-lite"],
)
def test_current_gemini_models_have_prices(model):
    price = PRICES.get(f"gemini/{model}")
    assert price is not None and 0 < price.input < price.output
    assert price.cached_input is None or price.cached_input < price.input


# --- end to end: openai SDK -> mux -> fake Gemini ------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    with serve(fake) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def gateway(fake: FakeGemini) -> Iterator[str]:
    config = mux.parse_config(
        {
            "providers": [
                {"name": "gemini", "type": "gemini", "base_url": fake.url, "api_key": API_KEY},  # type: ignore[attr-defined]
                {"name": "badkey", "type": "gemini", "base_url": fake.url, "api_key": "AIza-revoked"},  # type: ignore
            ]
        }
    )
    with serve(mux.build_app(config)) as url:
        yield url


@pytest.fixture
def client(gateway: str, fake: FakeGemini) -> Iterator[openai.OpenAI]:
    fake.reset()
    with openai.OpenAI(base_url=gateway + "/v1", api_key="client-key", max_retries=0) as sdk:
        yield sdk


MODEL = "gemini/gemini-2.5-flash"
KNOWN_USAGE = {
    "promptTokenCount": 1000,
    "cachedContentTokenCount": 200,
    "candidatesTokenCount": 50,
    "thoughtsTokenCount": 30,
    "totalTokenCount": 1080,
}
KNOWN_COST = (800 * 0.30 + 200 * 0.03 + 80 * 2.50) / 1_000_000  # gemini-2.5-flash: input, cached, output


def test_e2e_plain_completion_with_usage_and_cost(client, fake):
    fake.script(Reply(text="Paris.", usage=KNOWN_USAGE))
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[user("Capital of France?")])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gemini-2.5-flash"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        1000,
        80,
        1080,
    )
    assert completion.usage.prompt_tokens_details.cached_tokens == 200
    assert completion.usage.completion_tokens_details.reasoning_tokens == 30
    assert float(raw.headers["x-mux-cost-usd"]) == pytest.approx(KNOWN_COST)
    assert raw.headers["x-mux-provider"] == "gemini"
    sent = fake.last
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent" and sent.query == {}
    assert sent.headers["x-goog-api-key"] == API_KEY and "authorization" not in sent.headers
    assert sent.body == {"contents": [{"role": "user", "parts": [{"text": "Capital of France?"}]}]}


def test_e2e_bare_gemini_model_name(client, fake):
    completion = client.chat.completions.create(model="gemini-2.5-flash-lite", messages=[user()])
    assert completion.choices[0].message.content == "Hello from Gemini."
    assert fake.last.path == "/v1beta/models/gemini-2.5-flash-lite:generateContent"


def test_e2e_system_prompt_and_multi_turn(client, fake):
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            user("Hi"),
            {"role": "assistant", "content": "Hello."},
            user("Bye"),
        ],
    )
    assert fake.last.body == {
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello."}]},
            {"role": "user", "parts": [{"text": "Bye"}]},
        ],
    }


def test_e2e_system_content_parts_reach_gemini_as_one_part_each(client, fake):
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
            {"role": "developer", "content": "C\n"},
            user("Hi"),
        ],
    )

    assert fake.last.body["systemInstruction"] == {"parts": [{"text": "A"}, {"text": "B"}, {"text": "C\n"}]}


def test_e2e_tools_parallel_calls_and_the_tool_result_round_trip(client, fake):
    fake.script(
        Reply(text="", calls=[("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {})], signature="c2lnLTE=")
    )
    first = client.chat.completions.create(
        model=MODEL, messages=[user("Weather and time in Paris?")], tools=[WEATHER, TIME], tool_choice="auto"
    )
    declared = fake.last.body["tools"][0]["functionDeclarations"]
    assert "additionalProperties" not in json.dumps(declared)
    assert fake.last.body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    weather, clock = choice.message.tool_calls
    assert (weather.function.name, json.loads(weather.function.arguments)) == (
        "get_weather",
        {"city": "Paris", "unit": "c"},
    )
    assert (clock.function.name, clock.function.arguments) == ("get_time", "{}")
    assert weather.id != clock.id

    fake.script(Reply(text="It is 21°C and noon in Paris."))
    second = client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER, TIME],
        messages=[
            user("Weather and time in Paris?"),
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": weather.id, "content": json.dumps({"temp_c": 21})},
            {"role": "tool", "tool_call_id": clock.id, "content": "12:00"},
        ],
    )
    assert second.choices[0].message.content == "It is 21°C and noon in Paris."
    contents = fake.last.body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "c"}},
                "thoughtSignature": "c2lnLTE=",
            },
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
        ],
    }


def test_e2e_streamed_tool_calls(client, fake):
    fake.script(Reply(text="Checking.", calls=[("get_weather", {"city": "Oslo"}), ("get_time", {})]))
    stream = client.chat.completions.create(
        model=MODEL, messages=[user("Oslo?")], tools=[WEATHER, TIME], tool_choice="required", stream=True
    )
    chunks = list(stream)
    assert fake.last.query == {"alt": ["sse"]}
    assert fake.last.body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Checking."
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or ()]
    assert [(t.index, t.function.name, t.function.arguments) for t in calls] == [
        (0, "get_weather", '{"city":"Oslo"}'),
        (1, "get_time", "{}"),
    ]
    assert all(t.id and t.type == "function" for t in calls)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_e2e_stream_text_with_usage_and_cost(client, fake):
    fake.script(Reply(text=["Bonjour", " le", " monde"], usage=KNOWN_USAGE))
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[user("Say hi in French")], stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour le monde"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and (usage.prompt_tokens, usage.completion_tokens) == (1000, 80)
    assert usage.model_extra["cost"] == pytest.approx(KNOWN_COST)
    assert len({c.id for c in chunks}) == 1


def test_e2e_image_data_url(client, fake):
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                ],
            }
        ],
    )
    assert fake.last.body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}


def test_e2e_json_object_and_json_schema(client, fake):
    fake.script(Reply(text='{"ok": true}'), Reply(text='{"city": "Paris"}'))
    answer = client.chat.completions.create(
        model=MODEL, messages=[user("JSON please")], response_format={"type": "json_object"}
    )
    assert json.loads(answer.choices[0].message.content) == {"ok": True}
    assert fake.last.body["generationConfig"] == {"responseMimeType": "application/json"}
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[user("City?")],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "city",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        },
    )
    assert json.loads(answer.choices[0].message.content) == {"city": "Paris"}
    assert fake.last.body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]},
    }


def test_e2e_reasoning_returns_thoughts(client, fake):
    fake.script(Reply(text="42", thoughts=["Six times seven."]), Reply(text="42", thoughts=["Six", " times seven."]))
    answer = client.chat.completions.create(model=MODEL, messages=[user("6*7?")], reasoning_effort="low")
    assert fake.last.body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}
    message = answer.choices[0].message
    assert message.content == "42" and message.model_extra["reasoning"] == "Six times seven."
    assert answer.usage.completion_tokens_details.reasoning_tokens == 3
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=[user("6*7?")], reasoning_effort="low", stream=True)
    )
    assert "".join(c.choices[0].delta.model_extra.get("reasoning") or "" for c in chunks) == "Six times seven."
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "42"


def test_e2e_stop_and_length(client, fake):
    fake.script(Reply(text="one two"), Reply(text="one two thr", finish="MAX_TOKENS"))
    answer = client.chat.completions.create(model=MODEL, messages=[user("count")], stop=["three"], max_tokens=5)
    assert answer.choices[0].finish_reason == "stop"
    assert fake.last.body["generationConfig"] == {"stopSequences": ["three"], "maxOutputTokens": 5}
    answer = client.chat.completions.create(model=MODEL, messages=[user("count")], max_completion_tokens=3)
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.content == "one two thr"


def test_e2e_safety_is_content_filter_streamed_or_not(client, fake):
    fake.script(
        Reply(text="", finish="SAFETY"), Reply(block="SAFETY"), Reply(text="I", finish="SAFETY"), Reply(block="OTHER")
    )
    assert (
        client.chat.completions.create(model=MODEL, messages=[user("x")]).choices[0].finish_reason == "content_filter"
    )
    blocked = client.chat.completions.create(model=MODEL, messages=[user("x")])
    assert (blocked.choices[0].finish_reason, blocked.choices[0].message.content) == ("content_filter", "")
    for _ in range(2):
        chunks = list(client.chat.completions.create(model=MODEL, messages=[user("x")], stream=True))
        assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_e2e_several_choices(client, fake):
    answer = client.chat.completions.create(model=MODEL, messages=[user()], n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    assert fake.last.body["generationConfig"] == {"candidateCount": 2}


@pytest.mark.parametrize(
    "status, exc_type, mapped, code",
    [
        (400, openai.BadRequestError, 400, "upstream_bad_request"),
        (403, openai.InternalServerError, 502, "upstream_forbidden"),
        (404, openai.NotFoundError, 404, "upstream_not_found"),
        (429, openai.RateLimitError, 429, "upstream_rate_limited"),
        (500, openai.InternalServerError, 502, "upstream_server_error"),
        (503, openai.InternalServerError, 503, "upstream_unavailable"),
    ],
)
def test_e2e_each_error_status_is_mapped(client, fake, status, exc_type, mapped, code):
    fake.script(Reply(status=status), Reply(status=status))
    with pytest.raises(exc_type) as exc:
        client.chat.completions.create(model=MODEL, messages=[user()])
    assert (exc.value.status_code, exc.value.code) == (mapped, code)
    if status == 429:
        assert exc.value.response.headers["retry-after"] == "17"
    with pytest.raises(exc_type) as exc:  # a stream fails before its first byte the same way
        list(client.chat.completions.create(model=MODEL, messages=[user()], stream=True))
    assert (exc.value.status_code, exc.value.code) == (mapped, code)
    recovered(client)


def recovered(client: openai.OpenAI) -> None:
    """One good answer after failures (which also closes the target's circuit breaker for the next test)."""
    assert client.chat.completions.create(model=MODEL, messages=[user()]).choices[0].message.content


def test_e2e_unknown_model_and_bad_provider_key(client, fake):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gemini/gemini-9-ultra", messages=[user()])
    assert "gemini-9-ultra is not found" in exc.value.message
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="badkey/gemini-2.5-flash", messages=[user()])
    assert (exc.value.status_code, exc.value.code) == (502, "upstream_auth_failed")


def test_e2e_a_stream_cut_mid_way_ends_with_an_error_event(client, fake):
    for reply in (Reply(text=["a", "b", "c"], finish=None), Reply(text=["a", "b", "c"], cut_after=2)):
        fake.script(reply)
        received = []
        with client.chat.completions.create(model=MODEL, messages=[user()], stream=True) as stream:
            with pytest.raises(openai.APIError) as exc:
                for chunk in stream:
                    received.append(chunk.choices[0].delta.content)
        assert received[:2] == ["a", "b"]
        assert exc.value.code in ("upstream_stream_cut", "upstream_connection_lost")
        recovered(client)


# --- the fake is as strict as Gemini -------------------------------------------------------------------------


def test_fake_refuses_what_gemini_refuses(fake):
    fake.reset()
    url = f"{fake.url}/v1beta/models/gemini-2.5-flash:generateContent"  # type: ignore[attr-defined]
    ok = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with httpx.Client(timeout=5) as http:
        missing = http.post(url, json=ok)
        assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
        wrong = http.post(url, json=ok, headers={"x-goog-api-key": "nope"})
        assert wrong.status_code == 400 and "API key not valid" in wrong.json()["error"]["message"]
        key = {"x-goog-api-key": API_KEY}
        for bad, needle in [
            ({**ok, "generation_config": {"maxTokens": 3}}, "Unknown name \"maxTokens\" at 'generation_config'"),
            (
                {
                    **ok,
                    "tools": [
                        {
                            "functionDeclarations": [
                                {
                                    "name": "f",
                                    "parameters": {
                                        "type": "OBJECT",
                                        "properties": {"a": {"type": "STRING"}},
                                        "additionalProperties": False,
                                    },
                                }
                            ]
                        }
                    ],
                },
                "Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters'",
            ),
            (
                {
                    **ok,
                    "generationConfig": {
                        "responseMimeType": "application/json",
                        "responseSchema": {"type": "OBJECT", "properties": {"a": {"$ref": "#/$defs/A"}}},
                    },
                },
                'Unknown name "$ref"',
            ),
            (
                {
                    **ok,
                    "generationConfig": {
                        "responseMimeType": "application/json",
                        "responseSchema": {"type": "STRING", "format": "email"},
                    },
                },
                "format",
            ),
            ({"contents": []}, "contents is not specified"),
            ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role: user, model"),
            ({"contents": [{"role": "user", "parts": [{"text": ""}]}]}, "required oneof field 'data'"),
            (
                {
                    **ok,
                    "systemInstruction": {
                        "parts": [{"text": "A"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]
                    },
                },
                "system_instruction.parts[1]: only text parts",
            ),
            (
                {**ok, "systemInstruction": {"parts": [{"text": "A"}, {"text": ""}]}},
                "system_instruction.parts[1].data: required oneof field 'data'",
            ),
            (
                {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": "x"}}]}]},
                "google.protobuf.Struct",
            ),
        ]:
            answer = http.post(url, json=bad, headers=key)
            assert answer.status_code == 400 and answer.json()["error"]["status"] == "INVALID_ARGUMENT", bad
            assert needle in answer.json()["error"]["message"], answer.json()
        stream = http.post(url.replace(":generateContent", ":streamGenerateContent"), json=ok, headers=key)
        assert stream.headers["content-type"].startswith("application/json") and isinstance(stream.json(), list)
        fake.script(Reply(status=503))
        failed = http.post(url.replace(":generateContent", ":streamGenerateContent"), json=ok, headers=key)
        assert failed.status_code == 503 and failed.json()[0]["error"]["status"] == "UNAVAILABLE"
        sse = http.post(url.replace(":generateContent", ":streamGenerateContent?alt=sse"), json=ok, headers=key)
        assert sse.headers["content-type"] == "text/event-stream" and sse.content.endswith(b"}\r\n\r\n")
        assert b"[DONE]" not in sse.content


def test_vertex_variant_uses_the_project_path_and_a_bearer_token():
    import msgspec as _msgspec

    from mux.config import ConfigError, parse_config
    from mux.providers import ADAPTERS, Call
    from mux.wire import decode_request

    config = parse_config(
        {
            "providers": [
                {
                    "name": "vx",
                    "type": "vertex",
                    "api_key": "ya29.token",
                    "base_url": "https://europe-west4-aiplatform.googleapis.com",
                    "project": "my-proj",
                    "location": "europe-west4",
                }
            ]
        }
    )
    view, fields = decode_request(
        _msgspec.json.encode(
            {"model": "gemini-2.5-flash", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        )
    )
    upstream = ADAPTERS["vertex"].build_request(
        config.providers[0], Call(request=view, fields=fields, model="gemini-2.5-flash")
    )
    assert upstream.url == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-proj/locations/"
        "europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert upstream.headers["authorization"] == "Bearer ya29.token" and "x-goog-api-key" not in upstream.headers
    assert _msgspec.json.decode(upstream.body)["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    with pytest.raises(ConfigError, match="base_url: required"):
        parse_config({"providers": [{"name": "vx", "type": "vertex", "project": "p"}]})
