"""End to end: the official openai SDK -> mux over a real socket -> a strict fake of OpenAI over a real socket.

The fake refuses anything OpenAI would refuse (unknown parameters, bad keys, broken tool-message pairing), so a
200 here also proves mux forwarded a body OpenAI accepts; its records show exactly what mux sent upstream.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

import mux
from mux.engine.transport import HttpxTransport
from tests.conftest import (
    CLIENT_KEY,
    FAKE_OPENAI_KEY,
    TIGHT_FIRST_BYTE_S,
    TIGHT_TOTAL_S,
    WRONG_PROVIDER_KEY,
    gateway_config,
)
from tests.fakes.openai_upstream import Reply
from tests.servers import serve

MODEL = "openai/gpt-4o-mini"
SNAPSHOT = "gpt-4o-mini-2024-07-18"
MINI_PRICE = (0.15, 0.60, 0.075)  # gpt-4o-mini USD per million: input, output, cached input
HELLO = [{"role": "user", "content": "hello there"}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris"]}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
}


def cost_of(usage: dict[str, Any], price: tuple[float, float, float] = MINI_PRICE) -> float:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    fresh = usage["prompt_tokens"] - cached
    return (fresh * price[0] + cached * price[2] + usage["completion_tokens"] * price[1]) / 1_000_000


def raw_stream(gateway_url: str, body: dict) -> tuple[int, httpx.Headers, bytes]:
    """POST a streamed request with plain httpx; answer status, headers and the exact body bytes."""
    with httpx.Client(timeout=10) as http:
        with http.stream(
            "POST", gateway_url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"}
        ) as response:
            data = b"".join(response.iter_bytes())
    return response.status_code, response.headers, data


def sse_payloads(data: bytes) -> list[bytes]:
    """Split an SSE body into its data payloads, asserting the exact ``data: ...\\n\\n`` framing."""
    assert data.endswith(b"\n\n"), data[-80:]
    events = data[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event, event
    return [event[len(b"data: ") :] for event in events]


def wait_for(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# --- plain completions ---------------------------------------------------------------------------------------


def test_plain_completion_comes_back_in_openai_shape(client, fake_openai):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    completion = raw.parse()

    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == SNAPSHOT
    body = raw.http_response.json()
    assert body["id"].startswith("chatcmpl-")
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint"}
    assert body["object"] == "chat.completion"
    assert set(body["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Echo: hello there",
        "refusal": None,
        "annotations": [],
    }
    # upstream got the bare model name and exactly the client's fields
    assert fake_openai.last.body == {"model": "gpt-4o-mini", "messages": HELLO}


def test_usage_details_reach_the_client_unchanged(client, fake_openai):
    completion = client.chat.completions.create(model=MODEL, messages=HELLO)

    usage = completion.usage
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.prompt_tokens_details.audio_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.completion_tokens_details.accepted_prediction_tokens == 0


def test_system_prompt_and_multi_turn_history_reach_upstream_verbatim(client, fake_openai):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]},
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.2, max_tokens=50)

    assert completion.choices[0].message.content == "Echo: And 3+3?"
    sent = fake_openai.last.body
    assert sent["messages"] == messages
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50


# --- streaming -----------------------------------------------------------------------------------------------


def test_stream_assembles_content_and_ends_with_usage_chunk_when_asked(client, fake_openai):
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True})
    )

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Echo: hello there"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.prompt_tokens > 0 and final.usage.completion_tokens == 3
    assert final.usage.cost == pytest.approx(cost_of(final.usage.model_dump()))
    assert final.usage.prompt_tokens_details.cached_tokens == 0
    assert final.usage.completion_tokens_details.reasoning_tokens == 0
    assert all(c.usage is None for c in chunks[:-1])
    assert fake_openai.last.body["stream_options"] == {"include_usage": True}


def test_stream_without_include_usage_shows_no_usage_chunk_though_upstream_was_asked(client, fake_openai):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hello there"
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    # mux always accounts: it asked the upstream for the usage chunk, then kept it from the client
    assert fake_openai.last.body["stream_options"] == {"include_usage": True}
    assert fake_openai.last.completed


def test_stream_keeps_the_clients_other_stream_options(client, fake_openai):
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, stream_options={"include_obfuscation": False}
        )
    )

    assert all(c.choices and c.usage is None for c in chunks)
    assert fake_openai.last.body["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_stream_bytes_are_openai_sse_framing_ending_in_done(gateway_url, fake_openai):
    status, headers, data = raw_stream(
        gateway_url, {"model": MODEL, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    )

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(data)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])


# --- tools ---------------------------------------------------------------------------------------------------


def test_required_tool_choice_answers_tool_calls(client, fake_openai):
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, tools=[WEATHER_TOOL], tool_choice="required"
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 1}
    assert fake_openai.last.body["tools"] == [WEATHER_TOOL]
    assert fake_openai.last.body["tool_choice"] == "required"


def test_named_tool_choice_calls_that_function(client, fake_openai):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )

    assert completion.choices[0].message.tool_calls[0].function.name == "get_time"
    assert json.loads(completion.choices[0].message.tool_calls[0].function.arguments) == {"tz": "sample"}


def test_streamed_parallel_tool_calls_reassemble_by_index(client, fake_openai):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "call:get_weather and call:get_time please"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        stream=True,
    )

    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:  # the first delta of a call names it
                assert delta.id and delta.type == "function" and delta.function.name
                assert delta.function.arguments == ""
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None and delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments

    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": 1}
    assert json.loads(calls[1]["arguments"]) == {"tz": "sample"}
    assert calls[0]["id"] != calls[1]["id"]


def test_tool_result_round_trip(client, fake_openai):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "call:get_weather"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])

    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == 'Tool get_weather returned: {"temp_c": 21}'
    assert fake_openai.last.body["messages"] == messages


# --- JSON mode -----------------------------------------------------------------------------------------------


def test_json_object_mode_answers_json(client, fake_openai):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Answer in JSON: hi"}],
        response_format={"type": "json_object"},
    )

    assert json.loads(completion.choices[0].message.content) == {"echo": "Answer in JSON: hi"}
    assert fake_openai.last.body["response_format"] == {"type": "json_object"}


def test_json_schema_mode_answers_an_instance_of_the_schema(client, fake_openai):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": schema}}
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, response_format=response_format)

    assert json.loads(completion.choices[0].message.content) == {"name": "sample", "age": 1, "tags": ["sample"]}
    assert fake_openai.last.body["response_format"] == response_format


# --- gateway headers and cost --------------------------------------------------------------------------------


def test_mux_headers_name_request_provider_model_cost_and_latency(client, fake_openai):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    again = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)

    headers = raw.headers
    assert headers["x-mux-request-id"].startswith("req_")
    assert headers["x-mux-request-id"] != again.headers["x-mux-request-id"]
    assert headers["x-mux-provider"] == "openai"
    assert headers["x-mux-model-used"] == SNAPSHOT
    usage = raw.http_response.json()["usage"]
    assert float(headers["x-mux-cost-usd"]) == pytest.approx(cost_of(usage))
    assert float(headers["x-mux-latency-ms"]) >= 0


def test_stream_headers_name_provider_and_model_at_start(client, fake_openai):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, stream=True)
    headers = raw.headers
    list(raw.parse())

    assert headers["x-mux-request-id"].startswith("req_")
    assert headers["x-mux-provider"] == "openai"
    assert headers["x-mux-model-used"] == SNAPSHOT
    assert float(headers["x-mux-latency-ms"]) >= 0


def test_usage_cost_in_body_prices_cached_tokens_of_the_answered_snapshot(client, fake_openai):
    usage = {
        "prompt_tokens": 3000,
        "completion_tokens": 500,
        "total_tokens": 3500,
        "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    fake_openai.script(Reply(usage=usage))
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)

    expected = (2000 * 0.15 + 1000 * 0.075 + 500 * 0.60) / 1_000_000
    body_usage = raw.http_response.json()["usage"]
    assert body_usage["cost"] == pytest.approx(expected)
    assert float(raw.headers["x-mux-cost-usd"]) == pytest.approx(expected)
    assert {k: v for k, v in body_usage.items() if k != "cost"} == usage


# --- what reaches the upstream -------------------------------------------------------------------------------


def test_documented_params_mux_does_not_model_reach_upstream_untouched(client, fake_openai):
    # prompt_cache_retention and web_search_options are documented OpenAI parameters that mux's request view
    # does not model: they must be forwarded as sent (the strict fake accepts them)
    web = {
        "search_context_size": "low",
        "user_location": {"type": "approximate", "approximate": {"country": "FR", "city": "Paris"}},
    }
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, prompt_cache_retention="24h", web_search_options=web
    )

    assert completion.choices[0].message.content == "Echo: hello there"
    assert fake_openai.last.body["prompt_cache_retention"] == "24h"
    assert fake_openai.last.body["web_search_options"] == web


def test_unknown_param_reaches_upstream_and_its_400_passes_through(client, fake_openai):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_body={"some_new_param": 1})

    assert caught.value.status_code == 400
    assert "Unrecognized request argument supplied: some_new_param" in caught.value.message
    assert fake_openai.last.body["some_new_param"] == 1


def test_gateway_fields_never_reach_upstream(client, fake_openai):
    extra = {
        "mlx:tags": {"team": "search"},
        "mlx:end_user": "user-7",
        "mlx:cache": {"skip": True},
        "mlx:trace": True,
        "models": ["openai/gpt-4o"],
        "fallbacks": ["openai/gpt-4o"],
        "session_id": "sess-1",
    }
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, user="end-user-1", extra_body=extra)

    assert completion.choices[0].message.content == "Echo: hello there"
    sent = fake_openai.last.body
    assert not set(extra) & set(sent)
    assert sent == {"model": "gpt-4o-mini", "messages": HELLO, "user": "end-user-1"}


def test_client_credentials_and_headers_never_forwarded(client, fake_openai):
    client.chat.completions.create(
        model=MODEL, messages=HELLO, extra_headers={"x-custom-secret": "s3cret", "openai-organization": "org-client"}
    )

    record = fake_openai.last
    assert record.headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}"
    assert [k for k, _ in record.raw_headers].count("authorization") == 1
    forwarded = " ".join(f"{k}: {v}" for k, v in record.raw_headers)
    assert CLIENT_KEY not in forwarded and CLIENT_KEY.encode() not in record.raw_body
    assert "x-custom-secret" not in record.headers and "openai-organization" not in record.headers
    assert not any(k.startswith("x-stainless") for k in record.headers)


def test_invalid_request_is_refused_by_the_gateway_before_the_upstream(client, fake_openai):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[])

    assert caught.value.param == "messages"
    assert fake_openai.chat_requests == []


# --- upstream errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("upstream", "status", "exception"),
    [
        (400, 400, openai.BadRequestError),
        (401, 502, openai.InternalServerError),
        (403, 502, openai.InternalServerError),
        (429, 429, openai.RateLimitError),
        (500, 502, openai.InternalServerError),
        (503, 503, openai.InternalServerError),
        (529, 503, openai.InternalServerError),
    ],
)
def test_upstream_error_status_maps_to_gateway_status(client, fake_openai, upstream, status, exception, stream):
    fake_openai.script(Reply(status=upstream, headers={"retry-after": "7"}))
    with pytest.raises(exception) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=stream)

    error = caught.value
    assert error.status_code == status
    assert error.response.headers["x-mux-request-id"].startswith("req_")
    if status in (429, 503):
        assert error.response.headers["retry-after"] == "7"
    else:
        assert "retry-after" not in error.response.headers
    assert FAKE_OPENAI_KEY not in error.response.text
    assert len(fake_openai.chat_requests) == 1  # one target, so no second attempt


def test_upstream_400_message_reaches_the_client(client, fake_openai):
    fake_openai.script(
        Reply(
            status=400,
            error={
                "message": "Invalid 'max_tokens': integer above maximum value.",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "integer_above_max_value",
            },
        )
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO)

    assert "Invalid 'max_tokens': integer above maximum value." in caught.value.message
    assert caught.value.type == "invalid_request_error"


def test_upstream_rejecting_the_provider_key_is_a_502_not_the_clients_401(client, fake_openai):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="badkey/gpt-4o-mini", messages=HELLO)

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_failed"
    assert fake_openai.last.headers["authorization"] == f"Bearer {WRONG_PROVIDER_KEY}"
    assert WRONG_PROVIDER_KEY not in caught.value.response.text


def test_upstream_unknown_model_passes_as_404(client, fake_openai):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="openai/gpt-9-imaginary", messages=HELLO)

    assert "does not exist" in caught.value.message
    assert fake_openai.last.body["model"] == "gpt-9-imaginary"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("body", [b"", b"<html><body><h1>502 Bad Gateway</h1></body></html>"], ids=["empty", "html"])
def test_upstream_200_without_a_completion_is_a_502(client, fake_openai, body, stream):
    content_type = "text/html" if body else "application/json"
    fake_openai.script(Reply(body=body, content_type=content_type))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=stream)

    assert caught.value.status_code == 502


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_first_byte_timeout_is_a_504_and_abandons_the_upstream(client, fake_openai, stream):
    fake_openai.script(Reply(stall_s=5))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tight/gpt-4o-mini", messages=HELLO, stream=stream)
    elapsed = time.monotonic() - started

    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert TIGHT_FIRST_BYTE_S * 0.9 <= elapsed < 2.5
    record = fake_openai.last
    assert wait_for(lambda: record.disconnected_at is not None)
    assert record.status is None  # the fake never got to answer


def test_idle_timeout_mid_stream_ends_with_error_event_and_no_done(gateway_url, fake_openai):
    fake_openai.script(Reply(idle_after=2, idle_s=5))
    status, _, data = raw_stream(gateway_url, {"model": "tight/gpt-4o-mini", "messages": HELLO, "stream": True})

    assert status == 200
    payloads = sse_payloads(data)
    assert b"[DONE]" not in payloads
    assert [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[:-1]] == ["", "Echo:"]
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == "upstream_timeout"


def test_stream_over_its_total_time_ends_with_error_event_though_chunks_keep_coming(gateway_url, fake_openai):
    # a chunk every 0.1 s never trips the 0.3 s idle limit; the 1 s total limit must end the stream
    fake_openai.script(Reply(content=" ".join(["tick"] * 40), chunk_delay_s=0.1))
    started = time.monotonic()
    status, _, data = raw_stream(gateway_url, {"model": "tight/gpt-4o-mini", "messages": HELLO, "stream": True})
    elapsed = time.monotonic() - started

    assert status == 200
    assert TIGHT_TOTAL_S * 0.9 <= elapsed < TIGHT_TOTAL_S + 1.0
    payloads = sse_payloads(data)
    assert b"[DONE]" not in payloads
    assert 3 <= len(payloads) - 1 <= 12
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == "upstream_timeout" and "total time" in error["message"]
    record = fake_openai.last
    assert wait_for(lambda: record.disconnected_at is not None)


# --- broken streams ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cut_mode", "code"), [("eof", "upstream_stream_cut"), ("reset", "upstream_connection_lost")])
def test_stream_cut_ends_with_error_event_and_no_done(gateway_url, fake_openai, cut_mode, code):
    fake_openai.script(Reply(cut_after=3, cut_mode=cut_mode))
    status, _, data = raw_stream(gateway_url, {"model": MODEL, "messages": HELLO, "stream": True})

    assert status == 200
    payloads = sse_payloads(data)
    assert b"[DONE]" not in payloads
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 3
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Echo: hello"
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


def test_stream_cut_makes_the_openai_sdk_raise(client, fake_openai):
    fake_openai.script(Reply(cut_after=3))
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
            seen.append(chunk)

    assert len(seen) == 3
    assert "ended the stream before it was complete" in caught.value.message


def test_stream_cut_before_the_first_chunk_is_a_plain_502(client, fake_openai):
    fake_openai.script(Reply(cut_after=0))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_stream_cut"


def test_in_band_upstream_error_event_ends_stream_with_error_event(gateway_url, client, fake_openai):
    upstream_error = {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    # a short pause between events keeps them in separate reads, so the two good chunks reach the client first
    fake_openai.script(Reply(error_event=upstream_error, error_after=2, chunk_delay_s=0.05))
    status, _, data = raw_stream(gateway_url, {"model": MODEL, "messages": HELLO, "stream": True})

    assert status == 200
    payloads = sse_payloads(data)
    assert b"[DONE]" not in payloads and len(payloads) == 3
    error = json.loads(payloads[-1])["error"]
    assert "The server had an error while processing your request." in error["message"]

    fake_openai.script(Reply(error_event=upstream_error, error_after=2, chunk_delay_s=0.05))
    with pytest.raises(openai.APIError) as caught:
        list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    assert "The server had an error while processing your request." in caught.value.message


def test_client_disconnect_mid_stream_cancels_the_upstream_request(client, fake_openai):
    long_text = " ".join(f"word{i}" for i in range(200))
    fake_openai.script(Reply(content=long_text, chunk_delay_s=0.05))
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    iterator = iter(stream)
    next(iterator), next(iterator)
    closed_at = time.monotonic()
    stream.close()

    record = fake_openai.last
    assert wait_for(lambda: record.disconnected_at is not None, timeout=2.0)
    assert record.disconnected_at - closed_at < 1.0
    assert not record.completed
    assert record.chunks_sent < 50  # of 203
    assert fake_openai.wait_done(record, timeout=2.0)


# --- models --------------------------------------------------------------------------------------------------


def test_models_list_names_provider_slash_model(client, fake_openai):
    ids = [model.id for model in client.models.list()]

    assert ids == ["openai/gpt-4o-mini", "openai/gpt-4o"]


def test_unknown_model_is_404_model_not_found(client, fake_openai):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert fake_openai.chat_requests == []


# --- the transport seam --------------------------------------------------------------------------------------


def test_httpx_transport_serves_plain_and_streamed_requests(fake_openai):
    app = mux.build_app(mux.parse_config(gateway_config(fake_openai.base_url)), transport=HttpxTransport())
    with serve(app) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
            chunks = list(
                sdk.chat.completions.create(
                    model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
                )
            )

    assert raw.parse().choices[0].message.content == "Echo: hello there"
    assert raw.headers["x-mux-provider"] == "openai"
    assert float(raw.headers["x-mux-cost-usd"]) > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello there"
    assert chunks[-1].choices == [] and chunks[-1].usage.cost > 0
    assert len(fake_openai.chat_requests) == 2
    assert all(r.headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}" for r in fake_openai.chat_requests)
