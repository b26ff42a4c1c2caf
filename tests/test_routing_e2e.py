"""Routing configs end to end: the openai SDK -> mux (routes) -> the strict fake OpenAI, told to fail.

Providers ``primary`` and ``backup`` are the same fake under two names; each target asks for a different
model, so the fake's records tell which target an attempt went to (gpt-4o-mini: primary, gpt-4o: backup).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import msgspec
import openai
import pytest

import mux
from tests.conftest import FAKE_OPENAI_KEY
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.servers import free_port, serve

ADMIN = "admin-token-for-tests"
HELLO = [{"role": "user", "content": "hello there"}]


def config(base_url: str, **routes_override) -> dict:
    provider = {"type": "openai", "base_url": base_url, "api_key": FAKE_OPENAI_KEY}
    routes = {
        "production": {
            "strategy": "fallback",
            "targets": [{"model": "primary/gpt-4o-mini"}, {"model": "backup/gpt-4o"}],
        },
        "quick": {"strategy": "fallback", "targets": [{"model": "slow/gpt-4o-mini"}, {"model": "backup/gpt-4o"}]},
        "dead": {"strategy": "fallback", "targets": [{"model": "closed/gpt-4o-mini"}, {"model": "backup/gpt-4o"}]},
        "json": {"strategy": "cascade", "targets": [{"model": "primary/gpt-4o-mini"}, {"model": "backup/gpt-4o"}]},
        "retrying": {
            "strategy": "fallback",
            "targets": [{"model": "primary/gpt-4o-mini", "retries": 2}, {"model": "backup/gpt-4o", "retries": 2}],
        },
        **routes_override,
    }
    return {
        "providers": [
            {"name": "primary", **provider},
            {"name": "backup", **provider},
            {"name": "slow", **provider, "first_byte_timeout_s": 0.3},
            {"name": "closed", "type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "k"},
        ],
        "routes": routes,
        "health": {"breaker_failures": 3, "breaker_cooldown_s": 0.5, "backoff_base_ms": 1, "backoff_max_ms": 5},
        "server": {"admin_token": ADMIN},
        "state": "memory",
    }


@pytest.fixture(scope="module")
def gateway(fake_openai_server: FakeOpenAI) -> Iterator[tuple[mux.Gateway, str]]:
    app = mux.build_app(mux.parse_config(config(fake_openai_server.base_url)))
    with serve(app) as url:
        yield app, url


@pytest.fixture
def routed(gateway, fake_openai) -> Iterator[tuple[mux.Gateway, str, openai.OpenAI, FakeOpenAI]]:
    app, url = gateway
    app.routing.health.targets.clear()
    app.routing.health.budget.balance = app.routing.health.budget.cap
    client = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0, timeout=10)
    yield app, url, client, fake_openai
    client.close()


def models_called(fake: FakeOpenAI) -> list[str]:
    return [r.body["model"] for r in fake.chat_requests]


def test_fallback_before_the_first_byte_is_invisible_to_the_client(routed):
    _, _, client, fake = routed
    fake.script(Reply(status=503))
    raw = client.chat.completions.with_raw_response.create(model="@production", messages=HELLO)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-mux-provider"] == "backup"
    assert raw.headers["x-mux-config"] == "@production" and raw.headers["x-mux-config-version"] == "1"
    assert models_called(fake) == ["gpt-4o-mini", "gpt-4o"]


def test_streamed_fallback_before_the_first_byte_then_a_clean_stream(routed):
    _, _, client, fake = routed
    fake.script(Reply(status=429, headers={"retry-after": "0"}))
    chunks = list(client.chat.completions.create(model="@production", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert models_called(fake) == ["gpt-4o-mini", "gpt-4o"]


def test_no_fallback_after_the_first_byte_the_cut_reaches_the_client(routed):
    _, url, client, fake = routed
    fake.script(Reply(cut_after=2))
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={"model": "@production", "messages": HELLO, "stream": True}
    ) as response:
        body = b"".join(response.iter_bytes())
    assert response.status_code == 200
    assert not body.endswith(b"data: [DONE]\n\n") and b'"code":"upstream_stream_cut"' in body
    assert models_called(fake) == ["gpt-4o-mini"]


def test_first_byte_timeout_falls_over(routed):
    _, _, client, fake = routed
    fake.script(Reply(stall_s=3))
    chunks = list(client.chat.completions.create(model="@quick", messages=HELLO, stream=True))
    assert chunks and models_called(fake) == ["gpt-4o-mini", "gpt-4o"]


def test_refused_connection_falls_over(routed):
    _, _, client, fake = routed
    raw = client.chat.completions.with_raw_response.create(model="@dead", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "backup" and models_called(fake) == ["gpt-4o"]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"", content_type="text/event-stream"),
        Reply(body=b"<html>bad gateway</html>", content_type="text/html"),
    ],
)
def test_empty_or_html_200_falls_over_before_the_first_byte(routed, reply):
    _, _, client, fake = routed
    fake.script(reply)
    chunks = list(client.chat.completions.create(model="@production", messages=HELLO, stream=True))
    assert chunks and models_called(fake) == ["gpt-4o-mini", "gpt-4o"]


def test_client_errors_are_neither_retried_nor_failed_over(routed):
    _, _, client, fake = routed
    fake.script(Reply(status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="@production", messages=HELLO)
    assert models_called(fake) == ["gpt-4o-mini"]


def test_retries_at_the_same_target_back_off_then_succeed(routed):
    _, _, client, fake = routed
    fake.script(Reply(status=500), Reply(status=502))
    raw = client.chat.completions.with_raw_response.create(
        model="@retrying", messages=HELLO, extra_body={"mlx:trace": True}
    )
    assert models_called(fake) == ["gpt-4o-mini"] * 3
    trace = raw.http_response.json()["mlx:trace"]
    assert [a["status"] for a in trace["attempts"]] == ["error", "error", "ok"]
    assert trace["decision"] == {
        "target": "primary/gpt-4o-mini",
        "reason": "answered after 2 failed or escalated attempts",
    }


def test_retry_budget_bounds_upstream_attempts_under_a_provider_that_always_fails(routed):
    app, _, client, fake = routed
    health = app.routing.health
    health.config.breaker_failures = 10_000  # isolate the budget from the breaker
    budget = health.budget
    try:
        budget.balance, budget.ratio, budget.floor_per_s = 2.0, 0.1, 0.0
        fake.script(*[Reply(status=503)] * 200)
        requests = 30
        for _ in range(requests):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="@retrying", messages=HELLO)
        # without a budget: 6 attempts per request; with it: each first attempt plus at most the balance and
        # a tenth of the requests
        assert len(fake.chat_requests) <= requests + 2 + 0.1 * requests + 1
    finally:
        health.config.breaker_failures, budget.ratio, budget.floor_per_s = 3, 0.2, 2.0


def test_tripped_breaker_skips_its_target_and_lets_it_back_after_the_cooldown(routed):
    _, _, client, fake = routed
    fake.script(*[Reply(status=500), Reply()] * 3)
    for _ in range(3):  # three failing primaries, each answered by the backup
        client.chat.completions.create(model="@production", messages=HELLO)
    assert models_called(fake) == ["gpt-4o-mini", "gpt-4o"] * 3
    raw = client.chat.completions.with_raw_response.create(
        model="@production", messages=HELLO, extra_body={"mlx:trace": True}
    )
    assert models_called(fake)[-1:] == ["gpt-4o"] and len(fake.chat_requests) == 7  # primary skipped
    assert raw.http_response.json()["mlx:trace"]["skipped"] == [
        {"target": "primary/gpt-4o-mini", "reason": "circuit open"}
    ]
    time.sleep(0.6)
    raw = client.chat.completions.with_raw_response.create(model="@production", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "primary"  # the half-open probe succeeded


def test_cascade_escalates_when_the_cheaper_answer_is_not_valid_json(routed):
    _, _, client, fake = routed
    fake.script(Reply(content="Sure! Here is your JSON: {oops"))
    raw = client.chat.completions.with_raw_response.create(
        model="@json",
        messages=[{"role": "user", "content": "answer in json"}],
        response_format={"type": "json_object"},
        extra_body={"mlx:trace": True},
    )
    assert raw.headers["x-mux-provider"] == "backup"
    attempts = raw.http_response.json()["mlx:trace"]["attempts"]
    assert [(a["target"], a["status"], a.get("reason")) for a in attempts] == [
        ("primary/gpt-4o-mini", "escalated", "invalid_json"),
        ("backup/gpt-4o", "ok", None),
    ]


def test_decision_trace_is_returned_in_the_body_and_in_a_final_stream_chunk(routed):
    _, url, client, fake = routed
    fake.script(Reply(status=503))
    body = client.chat.completions.with_raw_response.create(
        model="@production", messages=HELLO, extra_body={"mlx:trace": True}
    ).http_response.json()
    trace = body["mlx:trace"]
    assert trace["schema"] == 1 and trace["config"] == "production" and trace["config_version"] == 1
    assert trace["strategy"] == "fallback"
    assert [c["target"] for c in trace["candidates"]] == ["primary/gpt-4o-mini", "backup/gpt-4o"]
    assert [(a["target"], a["status"], a.get("http_status")) for a in trace["attempts"]] == [
        ("primary/gpt-4o-mini", "error", 503),
        ("backup/gpt-4o", "ok", None),
    ]
    assert trace["decision"]["target"] == "backup/gpt-4o"
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={"model": "@production", "messages": HELLO, "stream": True, "mlx:trace": True},
    ) as response:
        data = b"".join(response.iter_bytes())
    events = data.split(b"\n\n")
    assert events[-2] == b"data: [DONE]" and b'"mlx:trace"' in events[-3]
    streamed = msgspec.json.decode(events[-3][len(b"data: ") :])
    assert streamed["choices"] == [] and streamed["mlx:trace"]["attempts"][0]["status"] == "ok"


def test_dry_run_returns_the_plan_without_calling_any_provider(routed):
    _, url, _, fake = routed
    response = httpx.post(
        url + "/v1/chat/completions",
        headers={"x-mux-dry-run": "true"},
        json={"model": "@production", "messages": HELLO},
    )
    assert response.status_code == 200 and fake.chat_requests == []
    trace = response.json()["mlx:trace"]
    assert trace["decision"]["target"] == "primary/gpt-4o-mini" and trace["attempts"] == []


def admin(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, url + path, headers={"authorization": f"Bearer {ADMIN}"}, **kwargs)


def test_admin_endpoints_need_the_admin_token(routed):
    _, url, _, _ = routed
    assert httpx.get(url + "/admin/routes").status_code == 401
    assert httpx.get(url + "/admin/routes", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert admin(url, "GET", "/admin/routes").json()["routes"]["production"]["version"] == 1


def test_admin_health_shows_a_429_cooled_target_beside_its_closed_breaker(routed):
    _, url, client, fake = routed
    fake.script(Reply(status=429, headers={"retry-after": "30"}))
    raw = client.chat.completions.with_raw_response.create(model="@production", messages=HELLO)
    assert raw.headers["x-mux-provider"] == "backup"  # the 429 failed over
    targets = admin(url, "GET", "/admin/health").json()["targets"]
    primary, backup = targets["primary/gpt-4o-mini"], targets["backup/gpt-4o"]
    assert primary["state"] == "closed" and primary["cooled"] is True and 25 < primary["cooled_for_s"] <= 30
    assert primary["consecutive_failures"] == 0 and primary["probing"] is False
    assert backup["state"] == "closed" and backup["cooled"] is False and backup["cooled_for_s"] is None
    assert backup["latency_ms"] is not None


def test_reload_never_drops_an_in_flight_stream_and_rollback_restores_the_old_version(fake_openai_server, fake_openai):
    base = fake_openai_server.base_url
    current = {"config": config(base)}
    app = mux.build_app(mux.parse_config(current["config"]), source=lambda: mux.parse_config(current["config"]))
    with serve(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=10)
        fake_openai.script(Reply(content=" ".join(["tick"] * 20), chunk_delay_s=0.05))
        received: list[str] = []

        def consume() -> None:
            stream = client.chat.completions.create(model="@production", messages=HELLO, stream=True)
            received.extend(c.choices[0].delta.content or "" for c in stream if c.choices)

        worker = threading.Thread(target=consume)
        worker.start()
        time.sleep(0.2)  # the stream is under way
        current["config"] = config(base, production={"strategy": "fallback", "targets": [{"model": "backup/gpt-4o"}]})
        reloaded = admin(url, "POST", "/admin/reload")
        assert reloaded.status_code == 200 and reloaded.json()["routes"]["production"]["version"] == 2
        worker.join(10)
        assert "".join(received).count("tick") == 20  # the in-flight stream finished on its old plan
        raw = client.chat.completions.with_raw_response.create(model="@production", messages=HELLO)
        assert raw.headers["x-mux-config-version"] == "2" and raw.headers["x-mux-provider"] == "backup"
        bad = current["config"] = {**config(base), "routes": {"x": {"targets": [{"model": "@x"}]}}}
        assert bad and admin(url, "POST", "/admin/reload").status_code == 400  # a cycle: refused, old config kept
        assert admin(url, "POST", "/admin/routes/production/rollback", json={"version": 1}).status_code == 200
        raw = client.chat.completions.with_raw_response.create(model="@production", messages=HELLO)
        assert raw.headers["x-mux-config-version"] == "1" and raw.headers["x-mux-provider"] == "primary"
        client.close()


STRATEGY_ROUTES = {
    "single": {"strategy": "single", "targets": [{"model": "primary/gpt-4o-mini"}]},
    "weighted": {
        "strategy": "weighted",
        "sticky": "end_user",
        "targets": [{"model": "primary/gpt-4o-mini", "weight": 3}, {"model": "backup/gpt-4o", "weight": 1}],
    },
    "latency": {"strategy": "latency", "targets": [{"model": "primary/gpt-4o-mini"}, {"model": "backup/gpt-4o"}]},
    "cost": {"strategy": "cost", "targets": [{"model": "backup/gpt-4o"}, {"model": "primary/gpt-4o-mini"}]},
    "cascade": {"strategy": "cascade", "targets": [{"model": "primary/gpt-4o-mini"}, {"model": "backup/gpt-4o"}]},
    "ab_test": {
        "strategy": "ab_test",
        "targets": [{"model": "@arm_a", "weight": 50}, {"model": "@arm_b", "weight": 50}],
    },
    "arm_a": {"targets": [{"model": "primary/gpt-4o-mini"}]},
    "arm_b": {"targets": [{"model": "backup/gpt-4o"}]},
}


@pytest.fixture(scope="module")
def strategies_gateway(fake_openai_server: FakeOpenAI) -> Iterator[str]:
    app = mux.build_app(mux.parse_config(config(fake_openai_server.base_url, **STRATEGY_ROUTES)))
    with serve(app) as url:
        yield url


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("route", ["single", "weighted", "latency", "cost", "cascade", "ab_test"])
def test_every_strategy_answers_through_the_openai_sdk(strategies_gateway, fake_openai, route, stream):
    client = openai.OpenAI(base_url=strategies_gateway + "/v1", api_key="k", max_retries=0, timeout=10)
    raw = client.chat.completions.with_raw_response.create(
        model=f"@{route}", messages=HELLO, stream=stream, extra_body={"mlx:end_user": "user-7"}
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content
    assert text
    assert raw.headers["x-mux-config"] == f"@{route}" and raw.headers["x-mux-config-version"] == "1"
    called = models_called(fake_openai)
    assert len(called) == 1  # a healthy first target answers: no extra attempt
    if route == "cost":
        assert called == ["gpt-4o-mini"]  # the cheaper of the two, though listed second
    if route == "ab_test":
        variant = raw.headers["x-mux-ab-variant"]
        assert called == (["gpt-4o-mini"] if variant == "@arm_a" else ["gpt-4o"])
        again = client.chat.completions.with_raw_response.create(
            model="@ab_test", messages=HELLO, extra_body={"mlx:end_user": "user-7"}
        )
        assert again.headers["x-mux-ab-variant"] == variant  # sticky per end user
    client.close()
