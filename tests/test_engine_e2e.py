"""The one attempt engine end to end, through the openai SDK against the strict fake OpenAI: a request's cost is
the total over every attempt, and embeddings fail over like chat completions."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

import mux
from tests.conftest import FAKE_OPENAI_KEY
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.servers import serve

USAGE = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
MINI = (0.15 + 0.60) * 1000 / 1e6  # gpt-4o-mini: USD per million input and output tokens
FOUR_O = (2.50 + 10.00) * 1000 / 1e6  # gpt-4o


@pytest.fixture(scope="module")
def gateway(fake_openai_server: FakeOpenAI) -> Iterator[tuple[mux.Gateway, str]]:
    provider = {"type": "openai", "base_url": fake_openai_server.base_url, "api_key": FAKE_OPENAI_KEY}
    config = mux.parse_config(
        {
            "providers": [{"name": "primary", **provider}, {"name": "backup", **provider}],
            "routes": {
                "json": {
                    "strategy": "cascade",
                    "targets": [{"model": "primary/gpt-4o-mini"}, {"model": "backup/gpt-4o"}],
                },
                "embed": {
                    "strategy": "fallback",
                    "targets": [
                        {"model": "primary/text-embedding-3-small"},
                        {"model": "backup/text-embedding-3-large"},
                    ],
                },
            },
            "health": {"backoff_base_ms": 1, "backoff_max_ms": 2},
        }
    )
    app = mux.build_app(config)
    with serve(app) as url:
        yield app, url


@pytest.fixture
def client(gateway, fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    app, url = gateway
    app.routing.health.targets.clear()
    with openai.OpenAI(base_url=url + "/v1", api_key="client", max_retries=0, timeout=10) as sdk:
        yield sdk


def test_a_cascade_reports_the_total_cost_of_every_attempt(client, fake_openai):
    fake_openai.script(Reply(content="Sure! {oops", usage=USAGE), Reply(usage=USAGE))
    raw = client.chat.completions.with_raw_response.create(
        model="@json",
        messages=[{"role": "user", "content": "answer in json"}],
        response_format={"type": "json_object"},
        extra_body={"mlx:trace": True},
    )
    body = raw.http_response.json()
    attempts = body["mlx:trace"]["attempts"]
    assert [a["status"] for a in attempts] == ["escalated", "ok"]
    assert attempts[0]["cost_usd"] == pytest.approx(MINI) and attempts[1]["cost_usd"] == pytest.approx(FOUR_O)
    assert float(raw.headers["x-mux-cost-usd"]) == pytest.approx(MINI + FOUR_O)
    assert body["usage"]["cost"] == pytest.approx(MINI + FOUR_O)
    assert raw.parse().usage.completion_tokens == 1000  # the usage is the answer's own; its cost is the total


def test_a_streamed_cascade_answer_reports_its_attempts_total_in_the_usage_chunk(client, fake_openai):
    fake_openai.script(Reply(usage=USAGE))
    chunks = list(
        client.chat.completions.create(
            model="@json",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.model_extra["cost"] == pytest.approx(MINI)


def test_embeddings_fail_over_to_the_next_target(client, fake_openai):
    fake_openai.script(Reply(status=503))
    raw = client.embeddings.with_raw_response.create(model="@embed", input="hello", encoding_format="float")
    assert raw.headers["x-mux-provider"] == "backup" and raw.headers["x-mux-config"] == "@embed"
    assert [r.body["model"] for r in fake_openai.embedding_requests] == [
        "text-embedding-3-small",
        "text-embedding-3-large",
    ]
    assert len(raw.parse().data[0].embedding) > 0


def test_embeddings_open_breaker_is_skipped_for_the_healthy_target(client, fake_openai):
    for _ in range(5):  # health.breaker_failures (default 5) failures in a row open the primary's breaker
        fake_openai.script(Reply(status=500))
        client.embeddings.create(model="@embed", input="x", encoding_format="float")
    fake_openai.reset()
    raw = client.embeddings.with_raw_response.create(model="@embed", input="hello", encoding_format="float")
    assert raw.headers["x-mux-provider"] == "backup"
    assert [r.body["model"] for r in fake_openai.embedding_requests] == ["text-embedding-3-large"]
