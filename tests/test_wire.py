"""The request view: valid requests round-trip, unknown fields survive forwarding, ranges are enforced."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.errors import InvalidRequest
from mux.wire import GATEWAY_KEYS, decode_request, encoder, forwardable_fields

text = st.text(max_size=20)
user_content = st.one_of(
    text,
    st.lists(
        st.one_of(
            st.builds(lambda t: {"type": "text", "text": t}, text),
            st.builds(lambda u: {"type": "image_url", "image_url": {"url": "https://x/" + u}}, text),
        ),
        min_size=1,
        max_size=3,
    ),
)
message = st.one_of(
    st.builds(lambda c: {"role": "system", "content": c}, text),
    st.builds(lambda c: {"role": "user", "content": c}, user_content),
    st.builds(lambda c: {"role": "assistant", "content": c}, text),
    st.builds(lambda c, i: {"role": "tool", "content": c, "tool_call_id": i}, text, text),
)
optional = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "max_tokens": st.integers(1, 100_000),
        "n": st.integers(1, 8),
        "seed": st.integers(-(2**53) + 1, 2**53 - 1),
        "stop": st.one_of(text, st.lists(text, max_size=4)),
        "stream": st.booleans(),
        "user": text,
        "tool_choice": st.sampled_from(["none", "auto", "required"]),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        "mlx:tags": st.dictionaries(st.text(min_size=1, max_size=10), text, max_size=4),
        "some_future_param": st.one_of(st.integers(), text, st.lists(st.integers(), max_size=3)),
    },
)


@st.composite
def requests(draw):
    body = {
        "model": draw(st.text(min_size=1, max_size=30)),
        "messages": draw(st.lists(message, min_size=1, max_size=5)),
    }
    body.update(draw(optional))
    return body


@settings(max_examples=200, deadline=None)
@given(requests())
def test_valid_requests_decode_and_round_trip(body):
    raw = msgspec.json.encode(body)
    view, fields = decode_request(raw)
    again, _ = decode_request(encoder.encode(view))
    assert again == view
    forwarded = msgspec.json.decode(encoder.encode(forwardable_fields(fields)))
    assert forwarded == {k: v for k, v in body.items() if k not in GATEWAY_KEYS}


def test_unknown_parameters_survive_byte_for_byte():
    raw = b'{"model":"m","messages":[{"role":"user","content":"x"}],"new_param":{"deep":[1,2.50,"\\u00e9"]}}'
    _, fields = decode_request(raw)
    assert bytes(forwardable_fields(fields)["new_param"]) == b'{"deep":[1,2.50,"\\u00e9"]}'


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"frequency_penalty": 2.1}, "frequency_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"session_id": "s" * 129}, "session_id"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, "messages[0].content[0].type"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"api_base": "http://evil"}, "api_base"),
        ({"api_key": "sk-x"}, "api_key"),
        ({"extra_headers": {"x": "y"}}, "extra_headers"),
        ({"mlx:unknown": 1}, "mlx:unknown"),
        ({"model": None, "models": None}, "model"),
    ],
)
def test_out_of_range_and_wrong_values_name_the_parameter(patch, param):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **patch}
    with pytest.raises(InvalidRequest) as info:
        decode_request(msgspec.json.encode(body))
    assert info.value.param == param
    assert info.value.status == 400
