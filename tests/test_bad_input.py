"""Bad input through the whole default stack: always a 4xx in OpenAI's error shape, never a 500."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mux
from mux.errors import UpstreamError

from .asgi_calls import call, http_scope


class RefusingTransport:
    """A transport whose every send fails as an unreachable upstream would: no network in these tests."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, request, provider):
        self.sent += 1
        raise UpstreamError("unreachable", code="upstream_unreachable")

    async def aclose(self) -> None:
        pass


CONFIG = mux.parse_config(
    {
        "providers": [
            {"name": "openai", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-upstream"}
        ],
        "server": {"max_body_mb": 0.5},
    }
)
LIMIT = CONFIG.server.max_body_bytes


@pytest.fixture(scope="module")
def app():
    return mux.build_app(CONFIG, transport=RefusingTransport())


def assert_openai_error(result, status: int, param: str | None = "unset"):
    assert result.status == status, result.body
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param != "unset":
        assert error["param"] == param
    assert "x-mux-request-id" in result.headers


def valid(**extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"", None),
        (b"{", None),
        (b"not json", None),
        (b"[1,2]", None),
        (b'"a string"', None),
        (b'{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"\xff\xfe"}]}', None),
        (b"[" * 100_000, None),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, None),
        (b'{"messages": [{"role":"user","content":"hi"}]}', "model"),
        (b'{"model": 5, "messages": [{"role":"user","content":"hi"}]}', "model"),
        (b'{"model": "gpt-4o-mini"}', "messages"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', "messages"),
    ],
)
def test_malformed_bodies_get_a_400_naming_the_parameter(app, raw, param):
    assert_openai_error(call(app, raw), 400, param)


def test_unknown_model_gets_404_model_not_found_listing_what_is_known(app):
    result = call(app, msgspec.json.encode(valid(model="no-such-model")))
    assert_openai_error(result, 404, "model")
    assert result.json()["error"]["code"] == "model_not_found"
    assert "openai" in result.json()["error"]["message"]


def test_model_of_an_unconfigured_provider_type_says_how_to_configure_it(app):
    result = call(app, msgspec.json.encode(valid(model="openai/gpt-4o")))  # configured: reaches the transport
    assert result.status == 502
    unconfigured = mux.build_app(mux.parse_config({}), transport=RefusingTransport())
    result = call(unconfigured, msgspec.json.encode(valid(model="gpt-4o-mini")))
    assert_openai_error(result, 400, "model")
    assert "OPENAI_API_KEY" in result.json()["error"]["message"]


def test_body_over_the_limit_with_content_length_is_refused_before_reading(app):
    consumed = []

    async def receive():
        consumed.append(1)
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = http_scope(headers=[(b"content-length", str(LIMIT + 1).encode())])
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and consumed == []


def test_body_over_the_limit_without_content_length_stops_reading_at_the_limit(app):
    chunk = b"x" * 1024
    total_chunks = 1000
    consumed = []

    async def receive():
        consumed.append(1)
        return {"type": "http.request", "body": chunk, "more_body": len(consumed) < total_chunks}

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(app(http_scope(), receive, send))
    assert sent[0]["status"] == 413
    assert len(consumed) <= LIMIT // len(chunk) + 2


def test_wrong_method_and_unknown_path_are_openai_shaped(app):
    assert_openai_error(call(app, b"", method="GET"), 405)
    assert_openai_error(call(app, b"", method="GET", path="/v1/nothing"), 404)


def test_credentials_and_endpoints_in_the_body_are_never_honoured(app):
    transport = RefusingTransport()
    gateway = mux.build_app(CONFIG, transport=transport)
    for key in ("api_base", "base_url", "api_key", "extra_headers"):
        result = call(gateway, msgspec.json.encode(valid(**{key: "http://attacker.example"})))
        assert_openai_error(result, 400, key)
    assert transport.sent == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "model",
        "messages",
        "temperature",
        "tools",
        "tool_choice",
        "stream",
        "n",
        "stop",
        "response_format",
        "mlx:tags",
        "mlx:cache",
        "max_tokens",
        "stream_options",
        "x",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        json_values,
        st.dictionaries(field_names, json_values, max_size=6),
        st.builds(lambda extra: {**valid(), **extra}, st.dictionaries(field_names, json_values, max_size=3)),
    )
)
def test_no_json_body_yields_a_500(app, value):
    result = call(app, msgspec.json.encode(value))
    assert result.status != 500 and result.status >= 400
    assert set(result.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_no_byte_string_yields_a_500(app, raw):
    result = call(app, raw)
    assert 400 <= result.status < 500 or result.status == 502
