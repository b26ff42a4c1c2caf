"""The router's pure decisions: strategies, stickiness, precedence of request fields and the retry budget
(breakers and panic routing: tests/test_health.py)."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.config import ConfigError, parse_config
from mux.routing.health import RetryBudget
from mux.routing.live import LiveRouting
from mux.routing.plan import weighted_order
from mux.wire import decode_request

PROVIDERS = [
    {"name": "a", "type": "openai", "api_key": "k"},
    {"name": "b", "type": "openai", "api_key": "k"},
    {"name": "c", "type": "openai", "api_key": "k"},
]


def routing(routes: dict, **health) -> LiveRouting:
    return LiveRouting(parse_config({"providers": PROVIDERS, "routes": routes, "health": health}))


def request(**body):
    view, _ = decode_request(msgspec.json.encode({"messages": [{"role": "user", "content": "x"}], **body}))
    return view


def labels(plan) -> list[str]:
    return [t.label for t in plan.targets]


def test_fallback_route_keeps_its_order_limits_and_version():
    live = routing(
        {
            "production": {
                "strategy": "fallback",
                "total_timeout_ms": 8000,
                "targets": [
                    {"model": "a/gpt-4o-mini", "timeout_ms": 2000},
                    {"model": "b/gpt-4o", "timeout_ms": 3000, "retries": 1},
                ],
            }
        }
    )
    plan = live.router.plan(request(model="@production"))
    assert labels(plan) == ["a/gpt-4o-mini", "b/gpt-4o"]
    assert [t.timeout_s for t in plan.targets] == [2.0, 3.0] and plan.targets[1].retries == 1
    assert (plan.route, plan.route_version, plan.strategy, plan.total_timeout_s) == ("production", 1, "fallback", 8.0)


def test_nested_routes_expand_in_place():
    live = routing(
        {
            "outer": {"targets": [{"model": "a/m1"}, {"model": "@inner"}, {"model": "c/m3"}]},
            "inner": {"targets": [{"model": "b/m2"}, {"model": "a/m1"}]},
        }
    )
    assert labels(live.router.plan(request(model="@outer"))) == ["a/m1", "b/m2", "c/m3"]


def test_route_cycles_are_refused_at_load_naming_the_cycle():
    with pytest.raises(ConfigError, match=r"@x -> @y -> @z -> @x"):
        routing(
            {
                "x": {"targets": [{"model": "@y"}]},
                "y": {"targets": [{"model": "@z"}]},
                "z": {"targets": [{"model": "@x"}]},
            }
        )


def test_unknown_route_is_model_not_found_listing_the_defined_ones():
    live = routing({"production": {"targets": [{"model": "a/m"}]}})
    with pytest.raises(Exception, match="@production") as info:
        live.router.plan(request(model="@staging"))
    assert info.value.status == 404


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=9), min_size=2, max_size=3), st.integers(0, 2**32))
def test_weighted_first_choice_stays_within_statistical_bounds(weights, seed):
    items = list(range(len(weights)))
    rng = random.Random(seed)
    trials = 3000
    firsts = Counter(weighted_order(items, weights, rng)[0] for _ in range(trials))
    total = sum(weights)
    for item, weight in zip(items, weights, strict=False):
        expected = weight / total
        spread = 4.5 * (expected * (1 - expected) / trials) ** 0.5  # ~4.5 sigma: a false alarm is vanishingly rare
        assert abs(firsts[item] / trials - expected) <= spread


def test_weighted_route_orders_every_target_and_zero_weight_goes_last():
    live = routing(
        {
            "w": {
                "strategy": "weighted",
                "targets": [
                    {"model": "a/m", "weight": 0},
                    {"model": "b/m", "weight": 1},
                    {"model": "c/m", "weight": 1},
                ],
            }
        }
    )
    for _ in range(50):
        order = labels(live.router.plan(request(model="@w")))
        assert sorted(order) == ["a/m", "b/m", "c/m"] and order[-1] == "a/m"


def test_sticky_weighted_assignment_is_stable_per_end_user_and_spread_across_users():
    live = routing(
        {
            "w": {
                "strategy": "weighted",
                "sticky": "end_user",
                "targets": [{"model": "a/m", "weight": 1}, {"model": "b/m", "weight": 1}],
            }
        }
    )
    firsts = {}
    for user in range(200):
        seen = {labels(live.router.plan(request(model="@w"), end_user=f"u{user}"))[0] for _ in range(5)}
        assert len(seen) == 1
        firsts[user] = seen.pop()
    share = Counter(firsts.values())["a/m"] / 200
    assert 0.35 < share < 0.65


def test_ab_test_picks_one_variant_sticky_per_end_user_and_reports_it():
    live = routing(
        {
            "exp": {"strategy": "ab_test", "targets": [{"model": "@va", "weight": 90}, {"model": "@vb", "weight": 10}]},
            "va": {"targets": [{"model": "a/m"}, {"model": "c/m"}]},
            "vb": {"targets": [{"model": "b/m"}]},
        }
    )
    variants = Counter()
    for user in range(300):
        plans = [live.router.plan(request(model="@exp"), end_user=f"user-{user}") for _ in range(3)]
        assert len({p.variant for p in plans}) == 1
        variants[plans[0].variant] += 1
        assert labels(plans[0]) == (["a/m", "c/m"] if plans[0].variant == "@va" else ["b/m"])
    assert 0.83 < variants["@va"] / 300 < 0.96


def test_latency_strategy_prefers_the_faster_healthy_target_and_tries_unmeasured_first():
    live = routing({"fast": {"strategy": "latency", "targets": [{"model": "a/m"}, {"model": "b/m"}, {"model": "c/m"}]}})
    health = live.health
    health.record("a/m", True, 300.0)
    health.record("b/m", True, 80.0)
    assert labels(live.router.plan(request(model="@fast"))) == ["c/m", "b/m", "a/m"]
    health.record("c/m", True, 150.0)
    assert labels(live.router.plan(request(model="@fast"))) == ["b/m", "c/m", "a/m"]


def test_cost_strategy_tries_the_cheapest_priced_target_first():
    live = routing(
        {
            "cheap": {
                "strategy": "cost",
                "targets": [{"model": "a/gpt-4o"}, {"model": "b/unpriced-model"}, {"model": "c/gpt-4o-mini"}],
            }
        }
    )
    assert labels(live.router.plan(request(model="@cheap"))) == ["c/gpt-4o-mini", "a/gpt-4o", "b/unpriced-model"]


def test_models_and_fallbacks_follow_the_model_without_repeats():
    live = routing({})
    plan = live.router.plan(request(model="a/m", models=["a/m", "b/m"], fallbacks=["b/m", "c/m"]))
    assert labels(plan) == ["a/m", "b/m", "c/m"]


def test_provider_only_ignore_and_order_filter_then_order_the_candidates():
    live = routing({})
    base = {"model": "a/m", "fallbacks": ["b/m", "c/m"]}
    plan = live.router.plan(request(**base, provider={"only": ["a", "c"]}))
    assert labels(plan) == ["a/m", "c/m"] and [s.reason for s in plan.skipped] == ["not in provider.only"]
    assert labels(live.router.plan(request(**base, provider={"ignore": ["a"]}))) == ["b/m", "c/m"]
    assert labels(live.router.plan(request(**base, provider={"order": ["c", "b"]}))) == ["c/m", "b/m", "a/m"]


def test_provider_order_wins_over_routing_prefer_and_limits_apply_last():
    live = routing({})
    base = {"model": "a/m", "fallbacks": ["b/m", "c/m"]}
    both = request(**base, provider={"order": ["b"]}, routing={"prefer": ["c"]})
    assert labels(live.router.plan(both)) == ["b/m", "c/m", "a/m"]
    assert labels(live.router.plan(request(**base, routing={"prefer": ["c"], "max_provider_tries": 2}))) == [
        "c/m",
        "a/m",
    ]
    assert labels(live.router.plan(request(**base, provider={"allow_fallbacks": False}))) == ["a/m"]
    assert labels(live.router.plan(request(**base, routing={"allow_fallbacks": False}))) == ["a/m"]


def test_sort_by_price_and_max_price_use_the_price_catalog():
    live = routing({})
    base = {"model": "a/gpt-4o", "fallbacks": ["b/gpt-4o-mini", "c/gpt-4.1"]}
    assert labels(live.router.plan(request(**base, provider={"sort": "price"}))) == [
        "b/gpt-4o-mini",
        "c/gpt-4.1",
        "a/gpt-4o",
    ]
    assert labels(live.router.plan(request(**base, route="sort"))) == ["b/gpt-4o-mini", "c/gpt-4.1", "a/gpt-4o"]
    plan = live.router.plan(request(**base, provider={"max_price": {"prompt": 1.0}}))
    assert labels(plan) == ["b/gpt-4o-mini"]
    assert {s.reason for s in plan.skipped} == {"prompt price above provider.max_price"}


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 500), st.floats(0, 1), st.floats(0, 5), st.floats(0.01, 30))
def test_retry_budget_never_allows_more_than_its_share_plus_floor(requests, ratio, floor, seconds):
    now = [0.0]
    budget = RetryBudget(ratio, floor, clock=lambda: now[0])
    allowed = 0
    for i in range(requests):
        now[0] = seconds * i / requests
        budget.deposit()
        while budget.withdraw():
            allowed += 1
    assert allowed <= budget.cap + ratio * requests + floor * seconds + 1e-6


def test_reload_assigns_new_versions_only_to_changed_routes_and_rollback_restores_content():
    config = {
        "providers": PROVIDERS,
        "routes": {"p": {"targets": [{"model": "a/m"}]}, "q": {"targets": [{"model": "b/m"}]}},
    }
    live = LiveRouting(parse_config(config))
    changed = {**config, "routes": {**config["routes"], "p": {"targets": [{"model": "c/m"}]}}}
    assert live.reload(parse_config(changed)) == {"p": 2, "q": 1}
    assert labels(live.router.plan(request(model="@p"))) == ["c/m"]
    assert live.rollback("p", 1).version == 1
    assert labels(live.router.plan(request(model="@p"))) == ["a/m"]
    assert [r.version for r in live.versions.history("p")] == [1, 2]


def test_sqlite_versions_persist_across_restarts_and_only_grow(tmp_path):
    from mux.routing.versions import SQLiteVersions

    path = str(tmp_path / "state.db")
    first = {"providers": PROVIDERS, "routes": {"p": {"targets": [{"model": "a/m"}]}}}
    second = {"providers": PROVIDERS, "routes": {"p": {"targets": [{"model": "b/m"}]}}}
    assert LiveRouting(parse_config(first), versions=SQLiteVersions(path)).routes["p"].version == 1
    assert LiveRouting(parse_config(second), versions=SQLiteVersions(path)).routes["p"].version == 2
    restarted = LiveRouting(parse_config(first), versions=SQLiteVersions(path))
    assert restarted.routes["p"].version == 1  # the same content keeps its number
    assert [r.version for r in restarted.versions.history("p")] == [1, 2]


def test_capability_prefilter_skips_targets_that_cannot_serve_the_request_with_the_reason():
    live = routing({"r": {"targets": [{"model": "a/o3-mini"}, {"model": "b/gpt-4o-mini"}]}})
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
            ],
        }
    ]
    plan = live.router.plan(request(model="@r", messages=image))
    assert labels(plan) == ["b/gpt-4o-mini"]
    assert [(s.target, s.reason) for s in plan.skipped] == [("a/o3-mini", "does not support images")]
    plan = live.router.plan(request(model="@r", max_tokens=50_000))
    assert labels(plan) == ["a/o3-mini"] and "maximum output of 16384" in plan.skipped[0].reason


def test_when_no_target_is_capable_a_400_says_why():
    live = routing({})
    long_prompt = [{"role": "user", "content": "word " * 200_000}]
    with pytest.raises(Exception) as info:
        live.router.plan(request(model="a/gpt-4o-mini", messages=long_prompt))
    assert info.value.status == 400 and "context window of 128000" in info.value.message
    assert info.value.code == "no_capable_target"


def test_unknown_models_are_never_filtered_and_config_catalog_entries_extend_and_override():
    config = parse_config(
        {
            "providers": PROVIDERS,
            "catalog": {
                "a/local-llama": {"context_window": 8192, "tools": False, "input": 0.0, "output": 0.0},
                "openai/gpt-4o-mini": {"input": 0.10},
            },
        }
    )
    live = LiveRouting(config)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    plan = live.router.plan(request(model="a/local-llama", fallbacks=["b/mystery"], tools=tools))
    assert labels(plan) == ["b/mystery"] and plan.skipped[0].reason == "does not support tools"
    mini = live.catalog.info(config.providers[1], "gpt-4o-mini-2024-07-18")
    assert (mini.input, mini.output, mini.context_window) == (0.10, 0.60, 128_000)
    with pytest.raises(ConfigError, match="catalog"):
        parse_config({"catalog": {"a/m": {"context": 5}}})


def accept_everything(request, answer) -> bool:
    return True


def test_cascade_validators_are_loaded_at_config_time():
    live = routing(
        {
            "c": {
                "strategy": "cascade",
                "targets": [{"model": "a/m"}, {"model": "b/m"}],
                "cascade": {"validator": "tests.test_router_strategies:accept_everything"},
            }
        }
    )
    assert live.routes["c"].config.cascade.validator.endswith("accept_everything")
    for bad in ("no_colon", "tests.test_router_strategies:missing", "no.such.module:f"):
        with pytest.raises(ConfigError, match="cascade.validator"):
            routing({"c": {"strategy": "cascade", "targets": [{"model": "a/m"}], "cascade": {"validator": bad}}})
