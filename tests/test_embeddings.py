"""``POST /v1/embeddings`` end to end: the official ``openai`` SDK (``client.embeddings.create``) -> mux over a real
socket -> strict fakes of OpenAI's embeddings API and Gemini's ``:batchEmbedContents`` over real sockets.

The fakes refuse what the real APIs refuse (unknown parameters or fields, empty inputs, ``dimensions`` where the
model has none, a per-request model that does not match the URL, a wrong or missing key), so a 200 here also
proves mux sent a body the provider accepts; their records show exactly what mux sent upstream. Both fakes answer
deterministic vectors (``embedding_vector`` / ``embedding_values``), so the vectors the SDK hands back are compared
value for value, in the float and in the base64 (little-endian float32) forms.

Note the SDK's own behaviour: when ``encoding_format`` is not given it asks for ``base64`` and decodes the answer
itself; when the caller asks for ``base64`` explicitly it returns the base64 strings untouched.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

import mux
from tests.fakes import gemini_upstream
from tests.fakes.gemini_upstream import FakeGemini, embedding_values
from tests.fakes.openai_upstream import FakeOpenAI, Reply, embedding_vector, pack_float32
from tests.servers import serve

OPENAI_KEY = "sk-fake-embeddings-upstream-0123456789"
CLIENT_KEY = "sk-client-key-never-forwarded"
SMALL = "openai/text-embedding-3-small"
LARGE = "openai/text-embedding-3-large"
GEMINI = "gemini/gemini-embedding-001"
SMALL_PRICE = 0.02  # USD per million input tokens (text-embedding-3-small)
GEMINI_PRICE = 0.15  # USD per million input tokens (gemini-embedding-001)


# --- servers (module-scoped: one fake each and one gateway for the whole file) ------------------------------


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=OPENAI_KEY)
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="module")
def fake_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    with serve(fake) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def gateway(fake_openai: FakeOpenAI, fake_gemini: FakeGemini) -> Iterator[str]:
    config = mux.parse_config(
        {
            "providers": [
                {
                    "name": "openai",
                    "type": "openai",
                    "base_url": fake_openai.base_url,
                    "api_key": OPENAI_KEY,
                    "models": ["text-embedding-3-small", "text-embedding-3-large"],
                },
                {
                    "name": "gemini",
                    "type": "gemini",
                    "base_url": fake_gemini.url,  # type: ignore[attr-defined]
                    "api_key": gemini_upstream.API_KEY,
                    "models": ["gemini-embedding-001"],
                },
                # a chat-only provider; never reached (nothing listens on port 9)
                {
                    "name": "anthropic",
                    "type": "anthropic",
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "sk-ant-unused",
                },
            ]
        }
    )
    with serve(mux.build_app(config)) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def client(sdk: openai.OpenAI, fake_openai: FakeOpenAI, fake_gemini: FakeGemini) -> openai.OpenAI:
    """The SDK client, with both fakes' records and scripts reset."""
    fake_openai.reset()
    fake_gemini.reset()
    return sdk


def post(gateway: str, body: Any, path: str = "/v1/embeddings") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gateway + path,
        content=content,
        timeout=10,
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
    )


def decode_b64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def assert_cost_headers(headers: httpx.Headers, provider: str, cost: float) -> None:
    assert headers["x-mux-provider"] == provider
    assert headers["x-mux-request-id"]
    assert float(headers["x-mux-cost-usd"]) == pytest.approx(cost, rel=1e-6)


# --- OpenAI: shapes, vectors, usage and cost --------------------------------------------------------------


def test_plain_string_comes_back_in_openai_shape_with_usage_cost_and_headers(client, fake_openai):
    raw = client.embeddings.with_raw_response.create(model=SMALL, input="hello world", encoding_format="float")
    result = raw.parse()

    assert [d.embedding for d in result.data] == [embedding_vector("hello world", 1536)]
    body = raw.http_response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == "text-embedding-3-small"
    assert body["data"][0]["object"] == "embedding" and body["data"][0]["index"] == 0
    assert set(body["data"][0]) == {"object", "index", "embedding"}
    cost = 2 * SMALL_PRICE / 1_000_000
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 2
    assert body["usage"]["cost"] == pytest.approx(cost)
    assert_cost_headers(raw.http_response.headers, "openai", cost)
    assert raw.http_response.headers["x-mux-model-used"] == "text-embedding-3-small"
    # upstream: exactly the client's fields, the bare model name, the provider's key and never the client's
    (sent,) = fake_openai.embedding_requests
    assert sent.body == {"model": "text-embedding-3-small", "input": "hello world", "encoding_format": "float"}
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert all(CLIENT_KEY not in value for _, value in sent.raw_headers)


def test_usage_keeps_openais_embedding_shape_plus_cost(client):
    body = client.embeddings.with_raw_response.create(
        model=SMALL, input="a b c", encoding_format="float"
    ).http_response.json()
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens", "cost"}


def test_list_of_strings_with_the_sdks_default_base64_is_decoded_to_the_fakes_vectors(client, fake_openai):
    texts = ["first text", "second, longer text", "third"]
    result = client.embeddings.create(model=SMALL, input=texts)

    assert [d.index for d in result.data] == [0, 1, 2]
    assert [d.embedding for d in result.data] == [embedding_vector(t, 1536) for t in texts]
    assert result.usage.prompt_tokens == result.usage.total_tokens == 2 + 4 + 1
    # the SDK asked for base64 itself; mux relayed the strings unchanged
    assert fake_openai.embedding_requests[-1].body == {
        "model": "text-embedding-3-small",
        "input": texts,
        "encoding_format": "base64",
    }


def test_dimensions_reach_openai_and_shorten_the_vectors(client, fake_openai):
    result = client.embeddings.create(model=LARGE, input=["shorter please"], dimensions=256, encoding_format="float")

    assert [len(d.embedding) for d in result.data] == [256]
    assert result.data[0].embedding == embedding_vector("shorter please", 256)
    assert fake_openai.embedding_requests[-1].body["dimensions"] == 256
    assert fake_openai.embedding_requests[-1].body["model"] == "text-embedding-3-large"


def test_explicit_base64_is_relayed_as_little_endian_float32(client):
    result = client.embeddings.create(model=SMALL, input=["x", "y"], encoding_format="base64")

    for item, text in zip(result.data, ["x", "y"], strict=False):
        assert isinstance(item.embedding, str)  # asked explicitly: the SDK leaves it encoded
        assert item.embedding == pack_float32(embedding_vector(text, 1536))
        assert decode_b64(item.embedding) == embedding_vector(text, 1536)


def test_token_id_inputs_are_forwarded_as_they_are(client, fake_openai):
    one = client.embeddings.create(model=SMALL, input=[101, 2023, 2003], encoding_format="float")
    assert [d.embedding for d in one.data] == [embedding_vector([101, 2023, 2003], 1536)]
    assert one.usage.prompt_tokens == 3

    many = client.embeddings.create(model=SMALL, input=[[1, 2], [3]], encoding_format="float")
    assert [d.embedding for d in many.data] == [embedding_vector([1, 2], 1536), embedding_vector([3], 1536)]
    assert many.usage.prompt_tokens == 3
    assert [r.body["input"] for r in fake_openai.embedding_requests] == [[101, 2023, 2003], [[1, 2], [3]]]


def test_user_and_the_api_v1_path_are_served_too(gateway, client, fake_openai):
    response = post(gateway, {"model": SMALL, "input": "hi", "user": "user-42"}, path="/api/v1/embeddings")

    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["embedding"] == embedding_vector("hi", 1536)
    assert fake_openai.embedding_requests[-1].body == {
        "model": "text-embedding-3-small",
        "input": "hi",
        "user": "user-42",
    }


def test_gateway_keys_are_not_forwarded_to_openai(client, fake_openai):
    result = client.embeddings.create(
        model=SMALL,
        input="tagged",
        encoding_format="float",
        extra_body={"session_id": "s-1", "mlx:tags": {"team": "search"}},
    )

    assert result.data[0].embedding == embedding_vector("tagged", 1536)
    assert fake_openai.embedding_requests[-1].body == {
        "model": "text-embedding-3-small",
        "input": "tagged",
        "encoding_format": "float",
    }


def test_unknown_parameters_are_relayed_and_openai_refuses_them(client, fake_openai):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=SMALL, input="x", extra_body={"truncate": True})

    assert caught.value.status_code == 400
    assert caught.value.body["code"] == "upstream_bad_request"
    assert "Unrecognized request argument supplied: truncate" in caught.value.body["message"]
    assert fake_openai.embedding_requests[-1].status == 400


# --- OpenAI: errors ---------------------------------------------------------------------------------------


def test_upstream_429_stays_429_with_retry_after(client, fake_openai):
    fake_openai.script(Reply(status=429))
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model=SMALL, input="x")

    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "upstream_rate_limited"
    assert caught.value.response.headers["retry-after"] == "20"
    assert caught.value.response.headers["x-mux-request-id"]
    assert "x-mux-cost-usd" not in caught.value.response.headers


def test_upstream_500_becomes_502(client, fake_openai):
    fake_openai.script(Reply(status=500))
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model=SMALL, input="x")

    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_server_error"
    assert OPENAI_KEY not in caught.value.response.text


def test_an_unknown_model_is_404_model_not_found(client, fake_openai):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-embedder", input="x")

    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"
    assert fake_openai.requests == []


def test_a_model_openai_does_not_know_is_its_404(client, fake_openai):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="openai/text-embedding-4-huge", input="x")

    assert caught.value.body["code"] == "upstream_not_found"
    assert "text-embedding-4-huge" in caught.value.body["message"]


def test_a_chat_only_provider_is_400_unsupported_operation(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="anthropic/claude-haiku-4-5", input="x")

    assert caught.value.body["code"] == "unsupported_operation"
    assert caught.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": SMALL}, "input"),
        ({"model": SMALL, "input": []}, "input"),
        ({"model": SMALL, "input": ""}, "input"),
        ({"model": SMALL, "input": ["a", 1]}, "input"),
        ({"model": SMALL, "input": [[1, 2], 3]}, "input"),
        ({"model": SMALL, "input": 5}, "input"),
        ({"model": SMALL, "input": {"text": "a"}}, "input"),
        ({"model": SMALL, "input": [True]}, "input"),
        ({"input": "a"}, "model"),
        ({"model": 5, "input": "a"}, "model"),
        ({"model": SMALL, "input": "a", "dimensions": "256"}, "dimensions"),
        ({"model": SMALL, "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": SMALL, "input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"model": SMALL, "input": "a", "user": 7}, "user"),
    ],
)
def test_malformed_bodies_are_400_naming_the_param(gateway, client, fake_openai, body, param):
    response = post(gateway, body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param or error["param"].startswith(param + "["), error  # e.g. input[0]
    assert error["type"] == "invalid_request_error"
    assert fake_openai.requests == []


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"input"'])
def test_bodies_that_are_not_a_json_object_are_400(gateway, client, fake_openai, body):
    response = post(gateway, body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake_openai.requests == []


def test_get_is_405(gateway):
    response = httpx.get(gateway + "/v1/embeddings", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 405


# --- Gemini ---------------------------------------------------------------------------------------------------


def test_gemini_list_of_strings_becomes_batch_embed_contents(client, fake_gemini):
    texts = ["What is the meaning of life?", "How does the brain work?"]
    raw = client.embeddings.with_raw_response.create(model=GEMINI, input=texts)
    result = raw.parse()

    assert [d.embedding for d in result.data] == [embedding_values(t, 3072) for t in texts]
    assert result.model == "gemini-embedding-001"
    (sent,) = fake_gemini.requests
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == gemini_upstream.API_KEY
    assert "authorization" not in sent.headers and not sent.query
    assert sent.body == {
        "requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}} for t in texts]
    }
    # no usageMetadata in Google's answer: four characters a token, estimated
    tokens = sum(math.ceil(len(t) / 4) for t in texts)
    body = raw.http_response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens", "cost"}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == tokens
    cost = tokens * GEMINI_PRICE / 1_000_000
    assert body["usage"]["cost"] == pytest.approx(cost)
    assert_cost_headers(raw.http_response.headers, "gemini", cost)


def test_gemini_single_string_and_float_format(client, fake_gemini):
    result = client.embeddings.create(model=GEMINI, input="one", encoding_format="float")

    assert [d.embedding for d in result.data] == [embedding_values("one", 3072)]
    assert [d.index for d in result.data] == [0]
    assert fake_gemini.last.body == {
        "requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "one"}]}}]
    }


def test_gemini_dimensions_become_output_dimensionality(client, fake_gemini):
    result = client.embeddings.create(model=GEMINI, input=["a", "b"], dimensions=768, encoding_format="float")

    assert [d.embedding for d in result.data] == [embedding_values("a", 768), embedding_values("b", 768)]
    assert [r["outputDimensionality"] for r in fake_gemini.last.body["requests"]] == [768, 768]


def test_gemini_explicit_base64_is_little_endian_float32(client):
    result = client.embeddings.create(model=GEMINI, input=["packed"], encoding_format="base64")

    assert isinstance(result.data[0].embedding, str)
    assert result.data[0].embedding == pack_float32(embedding_values("packed", 3072))
    assert decode_b64(result.data[0].embedding) == embedding_values("packed", 3072)


def test_gemini_refuses_token_id_input_before_calling_google(client, fake_gemini):
    for tokens in ([1, 2, 3], [[1, 2], [3]]):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=GEMINI, input=tokens)
        assert caught.value.body["param"] == "input"
    assert fake_gemini.requests == []


def test_gemini_usage_metadata_is_used_when_google_sends_it(client, fake_gemini):
    fake_gemini.script(gemini_upstream.Reply(usage={"promptTokenCount": 42}))
    raw = client.embeddings.with_raw_response.create(model=GEMINI, input=["counted"])

    usage = raw.http_response.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] == 42
    assert usage["cost"] == pytest.approx(42 * GEMINI_PRICE / 1_000_000)
    assert_cost_headers(raw.http_response.headers, "gemini", 42 * GEMINI_PRICE / 1_000_000)


def test_gemini_errors_are_mapped(client, fake_gemini):
    fake_gemini.script(gemini_upstream.Reply(status=429), gemini_upstream.Reply(status=500))
    with pytest.raises(openai.RateLimitError) as limited:
        client.embeddings.create(model=GEMINI, input="x")
    with pytest.raises(openai.APIStatusError) as broken:
        client.embeddings.create(model=GEMINI, input="x")

    assert limited.value.status_code == 429
    assert broken.value.status_code == 502
    assert gemini_upstream.API_KEY not in limited.value.response.text + broken.value.response.text


def test_gemini_chat_model_is_googles_404(client, fake_gemini):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="gemini/gemini-2.5-flash", input="x")

    assert "batchEmbedContents" in caught.value.body["message"]


# --- the fakes are as strict as the real APIs (what makes the 200s above meaningful) -----------------------


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (
            {"model": "text-embedding-3-small", "input": "x", "truncate": True},
            400,
            "Unrecognized request argument supplied: truncate",
        ),
        ({"model": "text-embedding-3-small", "input": ["a", ""]}, 400, "'$.input' is invalid"),
        ({"model": "text-embedding-3-small", "input": []}, 400, "'$.input' is invalid"),
        ({"model": "text-embedding-3-small", "input": ["a", 1]}, 400, "'$.input' is invalid"),
        ({"model": "text-embedding-3-small"}, 400, "Missing required parameter: 'input'"),
        (
            {"model": "text-embedding-ada-002", "input": "x", "dimensions": 8},
            400,
            "This model does not support specifying dimensions.",
        ),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 4096}, 400, "<= 1536"),
        ({"model": "gpt-4o-mini", "input": "x"}, 404, "does not exist"),
    ],
)
def test_the_fake_openai_refuses_what_openai_refuses(fake_openai, body, status, needle):
    response = httpx.post(
        fake_openai.base_url + "/embeddings", json=body, headers={"authorization": f"Bearer {OPENAI_KEY}"}
    )
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


def test_the_fake_openai_wants_its_key(fake_openai):
    body = {"model": "text-embedding-3-small", "input": "x"}
    assert httpx.post(fake_openai.base_url + "/embeddings", json=body).status_code == 401
    assert (
        httpx.post(
            fake_openai.base_url + "/embeddings", json=body, headers={"authorization": "Bearer sk-wrong-key-000000"}
        ).status_code
        == 401
    )


def _gemini_request(text: str = "x", model: str = "models/gemini-embedding-001", **extra: Any) -> dict:
    return {"model": model, "content": {"parts": [{"text": text}]}, **extra}


@pytest.mark.parametrize(
    ("model", "body", "status", "needle"),
    [
        ("gemini-embedding-001", {"requests": [_gemini_request(truncate=True)]}, 400, 'Unknown name "truncate"'),
        ("gemini-embedding-001", {"requests": [_gemini_request()], "dimensions": 8}, 400, 'Unknown name "dimensions"'),
        ("gemini-embedding-001", {"requests": [_gemini_request(model="models/text-embedding-004")]}, 400, "must match"),
        ("gemini-embedding-001", {"requests": [{"content": {"parts": [{"text": "x"}]}}]}, 400, "must match"),
        ("gemini-embedding-001", {"requests": [_gemini_request("")]}, 400, "parts[0].text"),
        ("gemini-embedding-001", {"requests": [{"model": "models/gemini-embedding-001"}]}, 400, "content"),
        ("gemini-embedding-001", {"requests": []}, 400, "requests"),
        (
            "gemini-embedding-001",
            {"requests": [_gemini_request(outputDimensionality=4000)]},
            400,
            "output_dimensionality",
        ),
        (
            "gemini-2.5-flash",
            {"requests": [_gemini_request(model="models/gemini-2.5-flash")]},
            404,
            "not supported for batchEmbedContents",
        ),
    ],
)
def test_the_fake_gemini_refuses_what_google_refuses(fake_gemini, model, body, status, needle):
    response = httpx.post(
        f"{fake_gemini.url}/v1beta/models/{model}:batchEmbedContents",
        json=body,  # type: ignore
        headers={"x-goog-api-key": gemini_upstream.API_KEY},
    )
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


def test_the_fake_gemini_answers_only_embeddings_and_wants_its_key(fake_gemini):
    url = f"{fake_gemini.url}/v1beta/models/gemini-embedding-001:batchEmbedContents"  # type: ignore[attr-defined]
    body = {"requests": [_gemini_request("hello", outputDimensionality=4)]}
    assert httpx.post(url, json=body).status_code == 403
    answer = httpx.post(url, json=body, headers={"x-goog-api-key": gemini_upstream.API_KEY}).json()
    assert answer == {"embeddings": [{"values": embedding_values("hello", 4)}]}
