"""The fake OpenAI upstream is as strict as OpenAI: these tests hold it to that, directly, without mux.

If the fake accepted what OpenAI refuses, the end-to-end tests that say "this never reaches the upstream"
would prove nothing.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import FAKE_OPENAI_KEY
from tests.fakes.openai_upstream import sample

HELLO = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {FAKE_OPENAI_KEY}"}


def post(fake, body, headers=None, content=None) -> httpx.Response:
    with httpx.Client(timeout=5) as http:
        if content is not None:
            return http.post(fake.base_url + "/chat/completions", content=content, headers=headers or AUTH)
        return http.post(fake.base_url + "/chat/completions", json=body, headers=AUTH if headers is None else headers)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer sk-wrong-key-000000"}, {"authorization": FAKE_OPENAI_KEY}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_fake_refuses_missing_or_wrong_bearer_key(fake_openai, headers):
    response = post(fake_openai, {"model": "gpt-4o-mini", "messages": HELLO}, headers=headers)

    assert response.status_code == 401
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key" and error["param"] is None
    assert "sk-wrong-key-000000" not in error["message"]


def test_fake_refuses_a_body_that_is_not_json(fake_openai):
    response = post(fake_openai, None, headers={**AUTH, "content-type": "text/plain"}, content=b"model=gpt-4o-mini")

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "param", "needle"),
    [
        (
            {"model": "gpt-4o-mini", "messages": HELLO, "mlx:tags": {}},
            400,
            "mlx:tags",
            "Unrecognized request argument supplied: mlx:tags",
        ),
        ({"model": "gpt-4o-mini", "messages": HELLO, "session_id": "s"}, 400, "session_id", "Unrecognized"),
        ({"messages": HELLO}, 400, None, "you must provide a model parameter"),
        ({"model": "gpt-4o-mini"}, 400, "messages", "Missing required parameter: 'messages'."),
        ({"model": "gpt-4o-mini", "messages": []}, 400, "messages", "empty array"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages[0].role",
            "Invalid value: 'robot'",
        ),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user"}]}, 400, "messages[0].content", "Missing required"),
        (
            {"model": "gpt-4o-mini", "messages": [*HELLO, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
            400,
            "messages[1].role",
            "must be a response to a preceeding message with 'tool_calls'",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [
                    *HELLO,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                ],
            },
            400,
            "messages",
            "did not have response messages: call_1",
        ),
        (
            {"model": "gpt-4o-mini", "messages": HELLO, "stream_options": {"include_usage": True}},
            400,
            "stream_options",
            "only allowed when 'stream' is enabled",
        ),
        (
            {"model": "gpt-4o-mini", "messages": HELLO, "tool_choice": "required"},
            400,
            "tool_choice",
            "only allowed when 'tools' are specified",
        ),
        (
            {"model": "gpt-4o-mini", "messages": HELLO, "response_format": {"type": "json_object"}},
            400,
            "messages",
            "must contain the word 'json'",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "messages": HELLO,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "strict": True,
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    },
                },
            },
            400,
            "response_format",
            "'additionalProperties' is required to be supplied and to be false",
        ),
        ({"model": "gpt-4o-mini", "messages": HELLO, "temperature": 3}, 400, "temperature", "maximum value"),
        ({"model": "gpt-5-imaginary", "messages": HELLO}, 404, None, "does not exist"),
    ],
    ids=[
        "gateway-key",
        "session-id",
        "no-model",
        "no-messages",
        "empty-messages",
        "bad-role",
        "no-content",
        "orphan-tool-result",
        "unanswered-tool-call",
        "stream-options-without-stream",
        "tool-choice-without-tools",
        "json-mode-without-json",
        "loose-strict-schema",
        "temperature",
        "unknown-model",
    ],
)
def test_fake_refuses_what_openai_refuses(fake_openai, body, status, param, needle):
    response = post(fake_openai, body)

    assert response.status_code == status
    error = error_of(response)
    assert error["param"] == param
    assert needle in error["message"]
    assert fake_openai.last.body == body  # recorded even when refused


def test_fake_stream_without_include_usage_has_no_usage_field(fake_openai):
    with httpx.Client(timeout=5) as http:
        response = http.post(
            fake_openai.base_url + "/chat/completions",
            headers=AUTH,
            json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
        )

    events = response.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-2]]
    assert all("usage" not in c and c["choices"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_fake_speaks_the_openai_sdk_protocol(fake_openai):
    with openai.OpenAI(base_url=fake_openai.base_url, api_key=FAKE_OPENAI_KEY, max_retries=0, timeout=5) as sdk:
        completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        chunks = list(
            sdk.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
        models = [m.id for m in sdk.models.list()]

    assert completion.choices[0].message.content == "Echo: hi"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hi"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == completion.usage.completion_tokens
    assert "gpt-4o-mini" in models


def test_sample_of_a_schema_is_deterministic():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Rome"]},
            "days": {"type": "integer"},
            "when": {"$ref": "#/$defs/when"},
            "note": {"type": ["null", "string"]},
        },
        "$defs": {"when": {"type": "object", "properties": {"hour": {"type": "number", "default": 9}}}},
    }

    assert sample(schema) == {"city": "Paris", "days": 1, "when": {"hour": 9}, "note": "sample"}
