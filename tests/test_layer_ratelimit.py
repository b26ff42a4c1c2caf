"""RateLimitLayer end to end through the openai SDK: requests and tokens per minute per end user, tag or key;
OpenAI's x-ratelimit-* headers on admitted answers and on the 429; tokens estimated up front and corrected by
the real usage; an unreachable state store lets requests pass with a warning."""

from __future__ import annotations

import asyncio

import openai
import pytest

import mux
from mux.layers.ratelimit import applicable, compile_limits, duration_text
from mux.stores.limits.memory import MemoryRateLimitStore

from .budget_helpers import Recorder, chat, config, gateway, headers_of, key, status_of, with_keys
from .servers import free_port

PROMPT = 8  # the prompt estimate of a "hi" (and OpenAI's count, which the fake mirrors)
REAL = 10  # the fake's usage for it: 8 prompt tokens and "Echo: hi", 2 completion tokens


class Frozen:
    def __init__(self) -> None:
        self.t = 1_804_000_000.0

    def __call__(self) -> float:
        return self.t


def frozen_gateway(cfg: mux.Config, **options):
    """A gateway whose rate-limit store runs on a clock that does not move: exact token arithmetic."""
    resources = mux.Resources(cfg)
    resources.limits = MemoryRateLimitStore(clock=Frozen())
    return gateway(cfg, resources=resources, **options), resources.limits


def test_openai_reset_durations_are_go_durations_rounded_up_to_the_millisecond():
    assert [duration_text(s) for s in (0, 0.0121, 0.999, 1, 1.5, 20, 59.9991, 60, 360, 3725.25)] == [
        "0s",
        "13ms",
        "999ms",
        "1s",
        "1.5s",
        "20s",
        "1m0s",
        "1m0s",
        "6m0s",
        "1h2m5.25s",
    ]


def test_a_keys_own_limit_and_the_matching_configured_limits_apply_narrowest_first():
    rules = compile_limits(
        [
            mux.config.RateLimitConfig(name="all", rpm=100),
            mux.config.RateLimitConfig(name="users", scope=mux.config.ScopeConfig(end_user="*"), rpm=60, tpm=100_000),
        ]
    )
    found = applicable(rules, key("acme", rpm=10), "u1", {})
    assert [(b.name, b.key, b.rpm, b.tpm) for b in found] == [
        ("users", "users|end_user:u1", 60, 100_000),
        ("key:acme", "key|key:acme", 10, None),
        ("all", "all|global", 100, None),
    ]


def test_requests_per_minute_per_end_user_refuse_with_429_and_openais_headers(fake_openai):
    cfg = config(
        fake_openai.base_url, state="memory", rate_limits=[{"name": "users", "scope": {"end_user": "*"}, "rpm": 3}]
    )
    with gateway(cfg) as (_, client, _app):
        answers = [chat(client, user="u1") for _ in range(4)]
        other = chat(client, user="u2")
    assert [status_of(a) for a in answers] == [200, 200, 200, 429] and status_of(other) == 200
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:3]] == ["2", "1", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers[:3])
    assert answers[0].headers["x-ratelimit-reset-requests"] == "20s"  # one request of 3 a minute drains in 20 s
    refused = answers[3]
    assert isinstance(refused, openai.RateLimitError)
    body = refused.response.json()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests" and "'users'" in body["message"]
    h = refused.response.headers
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    assert 19 <= int(h["retry-after"]) <= 20 and 19_000 <= int(h["retry-after-ms"]) <= 20_000
    assert h["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in h
    assert len(fake_openai.chat_requests) == 4


def test_tokens_are_the_prompt_estimate_up_front_and_corrected_by_the_real_usage(fake_openai):
    cfg = config(
        fake_openai.base_url,
        state="memory",
        rate_limits=[{"name": "tenant", "scope": {"tag": {"tenant": "*"}}, "tpm": 1000}],
    )
    served, _ = frozen_gateway(cfg)
    tags = {"x-mux-tags": "tenant=acme"}
    with served as (_, client, _app):
        first, second = chat(client, headers=tags), chat(client, headers=tags)
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - PROMPT)
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - REAL - PROMPT)
    assert "x-ratelimit-limit-requests" not in first.headers


def test_a_token_limit_refuses_once_the_real_usage_fills_it(fake_openai):
    cfg = config(fake_openai.base_url, state="memory", rate_limits=[{"name": "all", "tpm": 2 * REAL}])
    served, _ = frozen_gateway(cfg)
    with served as (_, client, _app):
        answers = [chat(client) for _ in range(3)]
    assert [status_of(a) for a in answers] == [200, 200, 429]
    assert answers[2].response.json()["error"]["type"] == "tokens"
    assert answers[2].response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_a_request_larger_than_the_token_limit_is_told_not_to_retry(fake_openai):
    cfg = config(fake_openai.base_url, state="memory", rate_limits=[{"name": "tiny", "tpm": PROMPT - 1}])
    with gateway(cfg) as (_, client, _app):
        refused = chat(client)
    assert status_of(refused) == 429
    assert refused.response.headers["x-should-retry"] == "false" and "retry-after" not in refused.response.headers
    assert "Request too large" in refused.response.json()["error"]["message"]
    assert not fake_openai.chat_requests


def test_a_refusal_by_one_limit_gives_back_the_tokens_an_earlier_limit_took(fake_openai):
    cfg = config(
        fake_openai.base_url,
        state="memory",
        rate_limits=[{"name": "one", "rpm": 1}, {"name": "users", "scope": {"end_user": "*"}, "tpm": 1000}],
    )
    served, store = frozen_gateway(cfg)
    with served as (_, client, _app):
        assert [status_of(chat(client, user="u1")) for _ in range(2)] == [200, 429]

    async def left() -> int:
        return (await store.acquire("users|end_user:u1", None, 1000, 0)).tokens.remaining

    assert asyncio.run(left()) == 1000 - REAL  # the refused request's estimate was given back


def test_a_keys_own_rpm_limits_that_key_only(fake_openai):
    keys = {"slow": key("slow", rpm=1), "free": key("free")}
    cfg = config(fake_openai.base_url, state="memory", server={"admin_token": "t"})
    with gateway(cfg, layers=with_keys(keys)) as (_, client, _app):
        slow = [status_of(chat(client, headers={"x-test-key": "slow"})) for _ in range(2)]
        free = [chat(client, headers={"x-test-key": "free"}) for _ in range(2)]
    assert slow == [200, 429] and [status_of(a) for a in free] == [200, 200]
    assert "x-ratelimit-limit-requests" not in free[0].headers


def test_an_unreachable_state_store_lets_rate_limited_requests_pass_with_a_warning(fake_openai):
    log = Recorder()
    cfg = config(
        fake_openai.base_url,
        state=f"redis://127.0.0.1:{free_port()}/12",
        rate_limits=[{"name": "users", "scope": {"end_user": "*"}, "rpm": 1}],
    )
    with gateway(cfg, logger=log) as (_, client, _app):
        answers = [chat(client, user="u1") for _ in range(3)]
    assert [status_of(a) for a in answers] == [200, 200, 200]
    assert "x-ratelimit-limit-requests" not in headers_of(answers[0])
    warned = log.named("rate_limit_state_unavailable")
    assert len(warned) == 1 and warned[0][0] == "warning" and "Redis state unreachable" in warned[0][2]["error"]
    assert log.named("state_unavailable")  # and at startup


def test_budget_and_rate_limit_config_mistakes_are_refused_naming_the_key():
    with pytest.raises(mux.ConfigError, match="rate_limits\\[0\\]: Object contains unknown field `rps`"):
        mux.parse_config({"rate_limits": [{"name": "x", "rps": 1}]})
    with pytest.raises(mux.ConfigError, match="budgets\\[0\\].to: no route named '@cheap'"):
        mux.parse_config({"budgets": [{"name": "x", "usd": 1, "period": "day", "action": "downgrade", "to": "@cheap"}]})
    with pytest.raises(mux.ConfigError, match="budgets\\[1\\].name: budget name 'x' is used twice"):
        mux.parse_config({"budgets": [{"name": "x", "usd": 1}, {"name": "x", "usd": 2}]})


def test_with_allowances_each_request_is_corrected_by_its_real_usage_before_the_next(fake_openai, tmp_path):
    """With SQLite state a request is admitted against the worker's allowance, and its token correction is left
    for the request's end (no coroutine of the layer in its await chain): consecutive answers' remaining tokens
    differ by the real usage, not by the estimate."""
    cfg = config(
        fake_openai.base_url,
        state=f"sqlite:///{tmp_path}/state.db",
        rate_limits=[{"name": "all", "rpm": 10**6, "tpm": 10**8}],
    )
    with gateway(cfg) as (_, client, _app):
        answers = [chat(client) for _ in range(8)]
    left = [int(a.headers["x-ratelimit-remaining-tokens"]) for a in answers]
    steps = [a - b for a, b in zip(left[2:], left[3:], strict=False)]  # from the allowance on
    assert steps.count(REAL) >= 4, (left, steps)
