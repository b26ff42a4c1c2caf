"""Health end to end: the openai SDK -> mux -> the strict fakes, told to fail. A breaker skips, it never
refuses; a 429 cools; every half-open probe ends in a recorded outcome; an adapter's refusal moves on; a client
that goes away cancels the upstream request and leaves a record.

Two gateways: the session's (tests/conftest.py: one fake OpenAI, default health knobs) and this module's,
whose breaker opens on one fault and whose health runs on a clock the tests move forward (``Skew``) instead
of sleeping through cooldowns. In this module's, providers ``primary`` and
``backup`` are the same fake OpenAI under two names (each route target asks a different model, so the fake's
records tell them apart: gpt-4o-mini is primary, gpt-4o is backup) and ``anthropic`` is the fake Anthropic.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

import mux
from mux.routing.health import Health
from mux.routing.live import LiveRouting
from tests.conftest import FAKE_OPENAI_KEY
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.anthropic_upstream import Reply as AnthropicReply
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.servers import serve

HELLO = [{"role": "user", "content": "hello there"}]
ANTHROPIC_KEY = "sk-ant-upstream-0123456789abcdef"
COOLDOWN_S = 30.0


class Skew:
    """A monotonic clock the test moves forward: the module gateway's health reads it."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead

    def past_the_cooldown(self) -> None:
        self.ahead += COOLDOWN_S + 1


class RecordingLogger:
    """Keeps the gateway's log events (one ``request`` record per request)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    error = info

    def records(self) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == "request"]


def wait_for(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def models_called(fake: FakeOpenAI) -> list[str]:
    return [r.body["model"] for r in fake.chat_requests]


def trace_of(raw) -> dict:
    return raw.http_response.json()["mlx:trace"]


# --- the session's gateway: one provider, default knobs (5 faults open the breaker for 30 s) --------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_single_target_model_answers_as_soon_as_its_provider_recovers(client, fake_openai, gateway_app, stream):
    faults = [
        Reply(status=500),
        Reply(status=503),
        Reply(body=b"<html>bad gateway</html>", content_type="text/html"),
        Reply(status=502),
        Reply(status=500),
    ] * 2
    fake_openai.script(*faults)
    for _ in range(10):
        with pytest.raises(openai.APIStatusError) as caught:
            result = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=stream)
            list(result) if stream else None
        assert caught.value.status_code in (502, 503)
        assert caught.value.code != "no_route_available"  # the provider's answer, never a refusal by mux
    assert len(fake_openai.chat_requests) == 10  # every request was sent
    assert gateway_app.routing.health.state("openai/gpt-4o-mini") == "open"

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=stream, extra_body={"mlx:trace": True}
    )
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        assert raw.parse().choices[0].message.content
        assert trace_of(raw)["events"][0]["note"].startswith(
            "every candidate's circuit is open: sending to openai/gpt-4o-mini"
        )
    assert len(fake_openai.chat_requests) == 11
    assert gateway_app.routing.health.state("openai/gpt-4o-mini") == "closed"  # the probe's success closed it


def test_429s_never_open_the_breaker_and_never_stop_a_single_target_request(client, fake_openai, gateway_app):
    fake_openai.script(*[Reply(status=429)] * 8)
    for _ in range(8):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert caught.value.response.headers["retry-after"] == "20"
    health = gateway_app.routing.health
    assert health.state("openai/gpt-4o-mini") == "closed" and health.cooled("openai/gpt-4o-mini")
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content
    assert len(fake_openai.chat_requests) == 9


def test_client_errors_from_the_provider_never_open_the_breaker(client, fake_openai, gateway_app):
    fake_openai.script(*[Reply(status=400)] * 6)
    for _ in range(6):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert gateway_app.routing.health.state("openai/gpt-4o-mini") == "closed"


# --- this module's gateway: a breaker that opens on one fault, on a clock the tests move ----------------------


def config(openai_url: str, anthropic_url: str) -> dict:
    provider = {"type": "openai", "base_url": openai_url, "api_key": FAKE_OPENAI_KEY}
    return {
        "providers": [
            {"name": "primary", **provider},
            {"name": "backup", **provider},
            {"name": "anthropic", "type": "anthropic", "base_url": anthropic_url, "api_key": ANTHROPIC_KEY},
        ],
        "routes": {
            "pair": {"targets": [{"model": "primary/gpt-4o-mini"}, {"model": "backup/gpt-4o"}]},
            "claude_first": {"targets": [{"model": "anthropic/claude-haiku-4-5"}, {"model": "backup/gpt-4o"}]},
        },
        "health": {"breaker_failures": 1, "breaker_cooldown_s": COOLDOWN_S, "backoff_base_ms": 1, "backoff_max_ms": 5},
    }


@pytest.fixture(scope="module")
def fake_anthropic_server() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key=ANTHROPIC_KEY)
    with serve(fake) as url:
        fake.url = url
        yield fake


SKEW = Skew()


@pytest.fixture(scope="module")
def gateway(fake_openai_server, fake_anthropic_server) -> Iterator[tuple[mux.Gateway, str, RecordingLogger]]:
    logger = RecordingLogger()
    parsed = mux.parse_config(config(fake_openai_server.base_url, fake_anthropic_server.url))
    routing = LiveRouting(parsed, health=Health(parsed.health, clock=SKEW))
    app = mux.build_app(parsed, logger=logger, routing=routing)
    with serve(app) as url:
        yield app, url, logger


@pytest.fixture
def health_gateway(gateway, fake_openai, fake_anthropic_server):
    """(app, url, logger, sdk client, fake OpenAI, fake Anthropic), with no health history and no records."""
    app, url, logger = gateway
    app.routing.health.targets.clear()
    app.routing.health.budget.balance = app.routing.health.budget.cap
    logger.events.clear()
    fake_anthropic_server.reset()
    sdk = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0, timeout=10)
    yield app, url, logger, sdk, fake_openai, fake_anthropic_server
    sdk.close()
    fake_anthropic_server.reset()


def open_primary(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    """One fault opens primary's breaker (the backup answers); then its cooldown passes: it is half-open."""
    fake.script(Reply(status=500))
    raw = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "backup"
    SKEW.past_the_cooldown()


def test_a_two_target_route_skips_the_open_target_then_probes_it_after_the_cooldown(health_gateway):
    app, _, _, sdk, fake, _ = health_gateway
    fake.script(Reply(status=500))
    sdk.chat.completions.create(model="@pair", messages=HELLO)
    raw = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO, extra_body={"mlx:trace": True})
    assert raw.headers["x-mux-provider"] == "backup"
    assert trace_of(raw)["skipped"] == [{"target": "primary/gpt-4o-mini", "reason": "circuit open"}]
    assert models_called(fake) == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]
    SKEW.past_the_cooldown()
    raw = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "primary"  # the probe
    assert app.routing.health.state("primary/gpt-4o-mini") == "closed"


def test_a_route_whose_targets_are_all_open_sends_to_the_one_whose_cooldown_ends_first(health_gateway):
    app, _, _, sdk, fake, _ = health_gateway
    fake.script(Reply(status=500), Reply(status=503))
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="@pair", messages=HELLO)  # both fail; both breakers open
    health = app.routing.health
    assert health.state("primary/gpt-4o-mini") == health.state("backup/gpt-4o") == "open"
    raw = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO, extra_body={"mlx:trace": True})
    assert raw.headers["x-mux-provider"] == "primary"  # opened first, so its cooldown ends first
    trace = trace_of(raw)
    assert trace["skipped"] == [{"target": "backup/gpt-4o", "reason": "circuit open"}]
    assert trace["events"][0] == {
        "type": "policy",
        "target": "primary/gpt-4o-mini",
        "note": (
            "every candidate's circuit is open: sending to primary/gpt-4o-mini, whose cooldown ends first, "
            "as its half-open probe"
        ),
    }
    assert health.state("primary/gpt-4o-mini") == "closed"


def test_a_429_cools_its_target_so_the_route_tries_the_other_first_meanwhile(health_gateway):
    app, _, _, sdk, fake, _ = health_gateway
    fake.script(Reply(status=429, headers={"retry-after": "5"}))
    first = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO)
    assert first.headers["x-mux-provider"] == "backup"
    raw = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO, extra_body={"mlx:trace": True})
    assert raw.headers["x-mux-provider"] == "backup"
    assert models_called(fake) == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]  # the cooled target was not tried first
    trace = trace_of(raw)
    assert [c["target"] for c in trace["candidates"]] == ["backup/gpt-4o", "primary/gpt-4o-mini"]
    assert trace["events"] == [
        {"type": "policy", "note": "rate limited (429), tried after the others: primary/gpt-4o-mini"}
    ]
    assert app.routing.health.state("primary/gpt-4o-mini") == "closed"


# --- every half-open probe ends in a recorded outcome ---------------------------------------------------------


def test_a_half_open_probe_answered_with_an_upstream_400_is_released(health_gateway):
    app, _, _, sdk, fake, _ = health_gateway
    open_primary(sdk, fake)
    fake.script(Reply(status=400))
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="@pair", messages=HELLO)  # the probe: the request's own fault
    assert models_called(fake)[-1] == "gpt-4o-mini"
    raw = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "primary"  # probed again, not skipped forever
    assert app.routing.health.state("primary/gpt-4o-mini") == "closed"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_half_open_probe_whose_client_goes_away_is_released(health_gateway, stream):
    app, url, _, sdk, fake, _ = health_gateway
    open_primary(sdk, fake)
    fake.script(Reply(stall_s=3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            url + "/v1/chat/completions", json={"model": "@pair", "messages": HELLO, "stream": stream}, timeout=0.4
        )
    probe = fake.chat_requests[-1]
    assert probe.body["model"] == "gpt-4o-mini"
    assert wait_for(lambda: probe.disconnected_at is not None)  # the upstream request was cancelled
    assert wait_for(lambda: not app.routing.health.targets["primary/gpt-4o-mini"].probing)
    raw = sdk.chat.completions.with_raw_response.create(model="@pair", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "primary"


def test_a_half_open_probe_refused_by_the_adapter_is_released_and_the_next_target_answers(health_gateway):
    app, _, _, sdk, fake, anthropic = health_gateway
    anthropic.script(AnthropicReply(status=500))
    raw = sdk.chat.completions.with_raw_response.create(model="@claude_first", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "backup"
    SKEW.past_the_cooldown()
    answer = sdk.chat.completions.create(model="@claude_first", messages=HELLO, n=2)  # Anthropic refuses n=2
    assert len(answer.choices) == 2 and answer.model.startswith("gpt-4o")
    assert len(anthropic.requests) == 1  # the refusal never reached Anthropic
    raw = sdk.chat.completions.with_raw_response.create(model="@claude_first", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "anthropic"  # the probe was not left in flight
    assert app.routing.health.state("anthropic/claude-haiku-4-5") == "closed"


# --- an adapter's refusal skips its target ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_adapter_refusal_moves_on_to_the_next_target_that_can_serve(health_gateway, stream):
    _, _, _, sdk, fake, anthropic = health_gateway
    raw = sdk.chat.completions.with_raw_response.create(
        model="@claude_first", messages=HELLO, n=2, stream=stream, extra_body={"mlx:trace": True}
    )
    if stream:
        chunks = list(raw.parse())
        assert {choice.index for c in chunks for choice in c.choices} == {0, 1}
    else:
        assert len(raw.parse().choices) == 2
        skipped, ok = trace_of(raw)["attempts"]
        assert skipped["target"] == "anthropic/claude-haiku-4-5" and skipped["status"] == "skipped"
        assert skipped["error"] == "unsupported_parameter" and "'n' greater than 1" in skipped["reason"]
        assert ok == {**ok, "target": "backup/gpt-4o", "status": "ok"}
        assert trace_of(raw)["decision"]["reason"] == "answered after skipping 1 target"
    assert raw.headers["x-mux-provider"] == "backup"
    assert anthropic.requests == [] and models_called(fake) == ["gpt-4o"]


def test_when_no_target_can_serve_the_last_refusal_is_answered(health_gateway):
    _, _, _, sdk, fake, anthropic = health_gateway
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="anthropic/claude-haiku-4-5",
            messages=HELLO,
            n=2,
            extra_body={"fallbacks": ["anthropic/claude-sonnet-4-5"]},
        )
    assert caught.value.body["param"] == "n" and anthropic.requests == [] and fake.requests == []


# --- clients that go away -----------------------------------------------------------------------------------------


def test_a_client_gone_from_a_plain_request_cancels_the_upstream_and_leaves_a_record(health_gateway):
    app, url, logger, _, fake, _ = health_gateway
    fake.script(Reply(stall_s=3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json={"model": "primary/gpt-4o-mini", "messages": HELLO}, timeout=0.3)
    closed_at = time.monotonic()
    upstream = fake.last
    assert wait_for(lambda: upstream.disconnected_at is not None, timeout=2.0)
    assert upstream.disconnected_at - closed_at < 1.0 and not upstream.completed
    assert wait_for(lambda: logger.records())
    record = logger.records()[-1]
    assert record["error"] == "client_disconnected" and record["attempts"] == 1
    assert app.routing.health.state("primary/gpt-4o-mini") == "closed"  # the client's leaving is no fault


def test_a_client_gone_from_an_embeddings_request_cancels_the_upstream(health_gateway):
    _, url, logger, _, fake, _ = health_gateway
    fake.script(Reply(stall_s=3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/embeddings", json={"model": "primary/text-embedding-3-small", "input": "hi"}, timeout=0.3)
    upstream = fake.embedding_requests[-1]
    assert wait_for(lambda: upstream.disconnected_at is not None, timeout=2.0)
    assert wait_for(lambda: logger.records()) and logger.records()[-1]["error"] == "client_disconnected"


def test_a_client_gone_before_its_body_is_complete_gets_no_answer_and_leaves_a_record(health_gateway):
    _, url, logger, _, fake, _ = health_gateway
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 500\r\n\r\n{"model": "primary/gpt-4o-mini", '
        )
        time.sleep(0.1)
    assert wait_for(lambda: logger.records())
    record = logger.records()[-1]
    assert record["error"] == "client_disconnected" and fake.requests == []
    assert record["status"] != 400  # nothing was answered (no "missing parameter")


@pytest.mark.parametrize(
    "received",
    [
        [{"type": "http.disconnect"}],
        [
            {"type": "http.request", "body": b'{"model": "primary/gpt-4o-mini", ', "more_body": True},
            {"type": "http.disconnect"},
        ],
    ],
    ids=["before-any-body", "mid-body"],
)
def test_a_disconnect_while_the_body_is_read_ends_quietly_marked_cancelled(
    fake_openai_server, fake_anthropic_server, received
):
    logger = RecordingLogger()
    app = mux.build_app(mux.parse_config(config(fake_openai_server.base_url, fake_anthropic_server.url)), logger=logger)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
    }
    messages = list(received)
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent == []  # no 400 about a missing parameter: the client is gone
    outcome = scope["mux"].outcome
    assert (outcome.status, outcome.error_type) == (499, "client_disconnected")
    assert logger.records()[-1]["error"] == "client_disconnected"
