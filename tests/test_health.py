"""Shared health alone and as the router reads it: the breaker's state machine on an injected clock, what
counts as a provider's fault, rate-limit cooling, and panic routing when every candidate's breaker is open."""

from __future__ import annotations

import msgspec
import pytest

from mux.config import HealthConfig, ProviderConfig, parse_config
from mux.errors import (
    ClientDisconnected,
    InvalidRequest,
    NoRouteAvailable,
    UpstreamError,
    UpstreamTimeout,
    retry_after_s,
)
from mux.providers.base import malformed, upstream_error
from mux.routing.decision import decision_trace
from mux.routing.health import Health, verdict
from mux.routing.live import LiveRouting
from mux.wire import decode_request

PROVIDER = ProviderConfig(name="p", type="openai", base_url="http://127.0.0.1:1/v1", api_key="k")
PROVIDERS = [{"name": n, "type": "openai", "api_key": "k"} for n in ("a", "b", "c")]


def clocked(**knobs) -> tuple[Health, list[float]]:
    now = [100.0]
    return Health(HealthConfig(**knobs), clock=lambda: now[0]), now


def status_error(status: int, headers: dict[str, str] | None = None) -> UpstreamError:
    return upstream_error(PROVIDER, status, b'{"error": {"message": "x"}}', headers or {})  # type: ignore[return-value]


def routing(routes: dict | None = None, **health) -> LiveRouting:
    return LiveRouting(parse_config({"providers": PROVIDERS, "routes": routes or {}, "health": health}))


def request(**body):
    view, _ = decode_request(msgspec.json.encode({"messages": [{"role": "user", "content": "x"}], **body}))
    return view


def labels(plan) -> list[str]:
    return [t.label for t in plan.targets]


# --- the state machine ------------------------------------------------------------------------------------------


def test_breaker_goes_closed_open_half_open_and_back_on_an_injected_clock():
    health, now = clocked(breaker_failures=3, breaker_cooldown_s=10)
    for _ in range(2):
        health.record("a/m", False)
    assert health.state("a/m") == "closed" and health.blocked("a/m") is None
    health.record("a/m", False)  # the third consecutive fault opens it
    assert health.state("a/m") == "open" and health.blocked("a/m") == "circuit open"
    assert health.reopens_at("a/m") == 110.0
    now[0] = 109.9
    assert health.state("a/m") == "open"
    now[0] = 110.0
    assert health.state("a/m") == "half_open" and health.blocked("a/m") is None
    assert health.admit("a/m") is True  # the probe
    assert health.blocked("a/m") == "circuit half-open, its probe in flight"
    assert health.admit("a/m") is False  # sent anyway when a plan has nothing else, but not the probe
    health.record("a/m", False, probe=True)  # the probe failed: open for a new cooldown
    assert health.state("a/m") == "open" and health.reopens_at("a/m") == 120.0
    now[0] = 120.0
    assert health.admit("a/m") is True
    health.record("a/m", True, 42.0, probe=True)
    assert health.state("a/m") == "closed" and health.targets["a/m"].failures == 0
    assert health.latency("a/m") == 42.0 and not health.targets["a/m"].probing


def test_a_success_between_faults_resets_the_count():
    health, _ = clocked(breaker_failures=2)
    health.record("a/m", False)
    health.record("a/m", True)
    health.record("a/m", False)
    assert health.state("a/m") == "closed"


def test_an_open_breaker_takes_a_forced_attempt_as_its_probe_and_a_success_closes_it():
    health, _ = clocked(breaker_failures=1, breaker_cooldown_s=30)
    health.record("a/m", False)
    assert health.state("a/m") == "open"
    assert health.admit("a/m") is True  # panic routing: the attempt counts as the half-open probe
    health.record("a/m", True, probe=True)
    assert health.state("a/m") == "closed"


@pytest.mark.parametrize("ending", ["release", "client error", "adapter refusal", "client gone", "rate limited"])
def test_a_probe_that_ends_without_a_verdict_is_released_and_counts_neither_way(ending):
    health, now = clocked(breaker_failures=1, breaker_cooldown_s=10)
    health.record("a/m", False)
    now[0] += 10
    assert health.admit("a/m") is True
    if ending == "release":
        health.release("a/m", True)
    else:
        error = {
            "client error": status_error(400),
            "adapter refusal": InvalidRequest("n must be 1", param="n"),
            "client gone": ClientDisconnected("gone"),
            "rate limited": status_error(429),
        }[ending]
        assert health.failed("a/m", error, probe=True) in ("neutral", "rate_limited")
    assert health.state("a/m") == "half_open" and health.blocked("a/m") is None  # not left "probing" forever
    assert health.targets["a/m"].failures == 1 and health.admit("a/m") is True  # the next attempt probes


def test_only_the_probe_clears_the_probe_flag():
    health, now = clocked(breaker_failures=1, breaker_cooldown_s=10)
    health.record("a/m", False)
    now[0] += 10
    assert health.admit("a/m") is True
    assert health.admit("a/m") is False  # a second attempt sent alongside the probe
    health.failed("a/m", status_error(400))  # ...ends first, without a verdict
    assert health.blocked("a/m") == "circuit half-open, its probe in flight"


# --- what counts as failure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (status_error(500), "fault"),
        (status_error(502), "fault"),
        (status_error(503), "fault"),
        (status_error(529), "fault"),
        (status_error(408), "fault"),
        (UpstreamTimeout("slow"), "fault"),
        (UpstreamError("refused", code="upstream_unreachable"), "fault"),
        (UpstreamError("lost", code="upstream_connection_lost"), "fault"),
        (malformed(PROVIDER, "an HTML page"), "fault"),
        (UpstreamError("cut", code="upstream_stream_cut"), "fault"),
        (status_error(429), "rate_limited"),
        (status_error(400), "neutral"),
        (status_error(401), "neutral"),
        (status_error(403), "neutral"),
        (status_error(404), "neutral"),
        (status_error(409), "neutral"),
        (status_error(413), "neutral"),
        (status_error(422), "neutral"),
        (InvalidRequest("n must be 1"), "neutral"),
        (ClientDisconnected("gone"), "neutral"),
    ],
)
def test_only_provider_faults_count_toward_the_breaker(error, expected):
    assert verdict(error) == expected
    health, _ = clocked(breaker_failures=1)
    health.failed("a/m", error)
    assert health.state("a/m") == ("open" if expected == "fault" else "closed")


def test_429s_cool_the_target_for_its_retry_after_and_never_open_the_breaker():
    health, now = clocked(breaker_failures=2, cooldown_429_s=1.5, cooldown_429_max_s=60)
    for _ in range(10):
        health.failed("a/m", status_error(429, {"retry-after": "20"}))
    assert health.state("a/m") == "closed" and health.targets["a/m"].failures == 0
    assert health.cooled("a/m")
    now[0] += 19.9
    assert health.cooled("a/m")
    now[0] += 0.1
    assert not health.cooled("a/m")
    health.failed("a/m", status_error(429))  # no Retry-After: the short default
    now[0] += 1.4
    assert health.cooled("a/m")
    now[0] += 0.1
    assert not health.cooled("a/m")
    health.failed("a/m", status_error(429, {"retry-after": "86400"}))  # capped
    now[0] += 60
    assert not health.cooled("a/m")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("20", 20.0), ("0.5", 0.5), ("0", 0.0), ("-3", None), ("nan", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
def test_retry_after_is_read_in_seconds(value, seconds):
    assert retry_after_s(UpstreamError("x", headers=[("retry-after", value)])) == seconds


# --- the router: skip, never refuse ---------------------------------------------------------------------------


def test_a_route_skips_the_open_target_while_another_is_left():
    live = routing({"r": {"targets": [{"model": "a/m"}, {"model": "b/m"}]}}, breaker_failures=1)
    live.health.record("a/m", False)
    plan = live.router.plan(request(model="@r"))
    assert labels(plan) == ["b/m"] and [(s.target, s.reason) for s in plan.skipped] == [("a/m", "circuit open")]
    assert plan.panic is None and plan.notes == []


def test_a_half_open_target_whose_probe_is_in_flight_is_skipped_while_another_is_left():
    live = routing(
        {"r": {"targets": [{"model": "a/m"}, {"model": "b/m"}]}}, breaker_failures=1, breaker_cooldown_s=0.001
    )
    live.health.record("a/m", False)
    live.health.targets["a/m"].opened_at -= 1
    assert labels(live.router.plan(request(model="@r"))) == ["a/m", "b/m"]  # half-open: a/m gets the probe
    assert live.health.admit("a/m") is True
    plan = live.router.plan(request(model="@r"))
    assert labels(plan) == ["b/m"] and plan.skipped[0].reason == "circuit half-open, its probe in flight"


def test_when_every_candidate_is_open_the_one_whose_cooldown_ends_first_gets_the_request():
    live = routing({"r": {"targets": [{"model": "a/m"}, {"model": "b/m"}, {"model": "c/m"}]}}, breaker_failures=1)
    health = live.health
    for label, opened in (("a/m", 30.0), ("b/m", 10.0), ("c/m", 20.0)):
        health.record(label, False)
        health.targets[label].opened_at = opened
    health.clock = lambda: 35.0
    plan = live.router.plan(request(model="@r"))
    assert labels(plan) == ["b/m"] and plan.panic == "b/m"
    assert [(s.target, s.reason) for s in plan.skipped] == [("a/m", "circuit open"), ("c/m", "circuit open")]
    trace = decision_trace(plan, [], dry_run=True)
    assert trace["events"] == [
        {
            "type": "policy",
            "target": "b/m",
            "note": (
                "every candidate's circuit is open: sending to b/m, whose cooldown ends first, as its half-open probe"
            ),
        }
    ]
    assert trace["decision"]["target"] == "b/m"


def test_a_single_model_with_an_open_breaker_is_still_planned_then_memoised_again_once_closed():
    live = routing(breaker_failures=1)
    live.health.record("a/m", False)
    plan = live.router.plan(request(model="a/m"))
    assert labels(plan) == ["a/m"] and plan.panic == "a/m" and plan.skipped == []
    assert "every candidate's circuit is open" in plan.notes[0].note
    live.health.record("a/m", True)
    plan = live.router.plan(request(model="a/m"))
    assert labels(plan) == ["a/m"] and plan.panic is None and plan.notes == []
    assert "a/m" in live.router._singles  # the fast path's memo


def test_no_route_available_is_only_for_plans_with_no_candidate():
    live = routing(breaker_failures=1)
    for label in ("a/m", "b/m"):
        live.health.record(label, False)
    assert labels(live.router.plan(request(model="a/m", fallbacks=["b/m"]))) == ["a/m"]
    with pytest.raises(NoRouteAvailable, match="not in provider.only"):
        live.router.plan(request(model="a/m", fallbacks=["b/m"], provider={"only": ["c"]}))


def test_cooled_targets_move_after_the_others_keeping_their_order():
    live = routing({"r": {"targets": [{"model": "a/m"}, {"model": "b/m"}, {"model": "c/m"}]}})
    live.health.failed("a/m", status_error(429, {"retry-after": "5"}))
    plan = live.router.plan(request(model="@r"))
    assert labels(plan) == ["b/m", "c/m", "a/m"] and plan.skipped == []
    assert [msgspec.to_builtins(n) for n in plan.notes] == [
        {"type": "policy", "note": "rate limited (429), tried after the others: a/m"}
    ]
    assert labels(live.router.plan(request(model="@r", routing={"allow_fallbacks": False}))) == ["b/m"]
    for label in ("b/m", "c/m"):
        live.health.failed(label, status_error(429, {"retry-after": "5"}))
    assert labels(live.router.plan(request(model="@r"))) == ["a/m", "b/m", "c/m"]  # all cooled: order kept


def test_a_cooled_single_target_is_still_planned():
    live = routing()
    live.health.failed("a/m", status_error(429, {"retry-after": "5"}))
    assert labels(live.router.plan(request(model="a/m"))) == ["a/m"]


# --- reloads ------------------------------------------------------------------------------------------------------


def test_a_reload_applies_new_health_settings_to_the_running_breakers():
    live = routing(breaker_failures=5, breaker_cooldown_s=30, retry_ratio=0.2)
    health = live.health
    for _ in range(2):
        health.record("a/m", False)
    assert health.state("a/m") == "closed"
    live.reload(parse_config({"providers": PROVIDERS, "health": {"breaker_failures": 3, "retry_ratio": 0.5}}))
    assert live.health is health and health.config.breaker_failures == 3  # same breakers, new settings
    assert health.targets["a/m"].failures == 2  # their state is kept
    health.record("a/m", False)  # the third fault opens it under the new threshold
    assert health.state("a/m") == "open"
    assert health.budget.ratio == 0.5
