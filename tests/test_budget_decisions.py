"""The BudgetLayer's pure decisions: which budgets apply, how long a reservation lives, what a request settles
to — and, with hypothesis, that the admission arithmetic never admits past the cap."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.config import BudgetConfig, ProviderConfig
from mux.context import Outcome, Spend
from mux.layers.budget import applicable, compile_budgets, reservation_ttl, settlement
from mux.routing.plan import Plan, Target
from mux.stores.spend.memory import MemorySpendStore
from mux.wire.openai import Usage

from .budget_helpers import key

T0 = 1_804_000_000.0  # a Wednesday, mid-day, mid-month (2027-03-10T12:53:20Z)


def budgets(*items: dict) -> list:
    return compile_budgets([msgspec.convert(i, BudgetConfig) for i in items])


def test_a_keys_own_budget_comes_first_then_the_configured_budgets_that_match():
    rules = budgets(
        {"name": "per-user", "scope": {"end_user": "*"}, "usd": 1, "period": "day"},
        {"name": "acme", "scope": {"tag": {"tenant": "acme"}}, "usd": 100, "period": "month"},
        {"name": "search", "scope": {"team": "search"}, "usd": 20, "period": "day", "action": "warn"},
        {"name": "all", "usd": 1000},
    )
    found = applicable(rules, key("k1", team="search", budget_usd=5.0, budget_period="week"), "u1", {"tenant": "acme"})
    assert [(a.window.name, a.window.scope_key, a.window.period, a.window.enforce) for a in found] == [
        ("key:k1", "key:k1", "week", True),
        ("per-user", "end_user:u1", "day", True),
        ("acme", "tag:tenant=acme", "month", True),
        ("search", "team:search", "day", False),
        ("all", "global", "total", True),
    ]
    assert found[0].window.cap_nano == 5_000_000_000
    assert [a.window.name for a in applicable(rules, None, None, {})] == ["all"]


def test_a_reservation_lives_as_long_as_every_attempt_can_take_or_the_routes_total_time():
    fast = ProviderConfig(name="a", type="openai", timeout_s=10)
    plan = Plan(targets=[Target(fast, "m", retries=1), Target(fast, "n", timeout_s=4)], requested="@r")
    assert reservation_ttl(plan, backoff_max_s=1) == 2 * (10 + 1) + (4 + 1) + 2
    plan.total_timeout_s = 6
    assert reservation_ttl(plan, backoff_max_s=1) == 6 + 2


def test_settlement_is_the_real_cost_keeps_the_worst_case_without_usage_and_releases_failures():
    usage = Usage(prompt_tokens=1, completion_tokens=1)
    assert settlement(Outcome(cost_usd=0.25, status=200), True, 10**9) == 250_000_000
    assert settlement(Outcome(cost_usd=0.25, status=502), False, 10**9) == 250_000_000  # an escalated answer
    assert settlement(Outcome(status=200), True, 10**9) == 10**9  # answered, usage unknown
    assert settlement(Outcome(status=200, spent=[Spend("local/m", usage, None)]), True, 10**9) == 0  # unpriced
    assert settlement(Outcome(status=502), False, 10**9) is None
    assert settlement(Outcome(status=499), True, 10**9) is None  # the client went away


operation = st.tuples(
    st.sampled_from(["reserve", "settle", "release", "advance"]), st.integers(0, 10**6), st.floats(0, 1)
)


@settings(max_examples=150, deadline=None)
@given(cap_a=st.integers(0, 5 * 10**6), cap_b=st.integers(0, 5 * 10**6), ops=st.lists(operation, max_size=60))
def test_the_admission_arithmetic_never_admits_past_the_cap(cap_a, cap_b, ops):
    """Requests reserve their worst case in two budgets (one per end user, one for everyone), then settle at
    most that, release it, or lapse: the spend and the reservations never pass either cap, except by what a
    settle recorded after its reservation had expired (the documented overspend)."""
    rules = budgets(
        {"name": "user", "scope": {"end_user": "*"}, "usd": cap_a / 1e9, "period": "day"},
        {"name": "all", "usd": cap_b / 1e9, "period": "day"},
    )
    windows = [a.window for a in applicable(rules, None, "u1", {})]
    clock = [T0]
    store = MemorySpendStore(clock=lambda: clock[0])

    async def run() -> None:
        held: dict[str, tuple[int, float]] = {}  # request id -> (reserved, expires)
        late = 0
        for n, (op, amount, fraction) in enumerate(ops):
            if op == "reserve":
                answer = await store.reserve(f"r{n}", windows, amount, 30)
                if answer.admitted:
                    held[f"r{n}"] = (amount, clock[0] + 30)
            elif op in ("settle", "release") and held:
                rid = sorted(held)[int(fraction * (len(held) - 1))]
                reserved, expires = held.pop(rid)
                if op == "settle":
                    actual = settlement(Outcome(cost_usd=int(reserved * fraction) / 1e9, status=200), True, reserved)
                    assert actual is not None and actual <= reserved
                    if await store.settle(rid, actual) and clock[0] >= expires:
                        late += actual
                else:
                    await store.release(rid)
            elif op == "advance":
                clock[0] += fraction * 40
            for w in windows:
                spent, reserved = await store.usage(w)
                assert spent + reserved <= w.cap_nano + late

    asyncio.run(run())
