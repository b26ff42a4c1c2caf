"""BudgetLayer end to end: the openai SDK over real sockets, through the whole stack, against the strict fake
OpenAI. Reservations hold under 50 concurrent requests; the 402 is exactly its documented shape and its
max_tokens hint really fits; settle counts the real cost (streams after their end), failures and
disconnects release; warn and downgrade; an unreachable state store fails closed unless fail_open."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import openai
import pytest

import mux
from mux.layers.budget import BudgetLayer, usd_text
from mux.money.units import to_nano
from mux.stores.spend.memory import MemorySpendStore

from .budget_helpers import (
    HI,
    INPROCESS_DB,
    Recorder,
    chat,
    config,
    gateway,
    headers_of,
    key,
    redis_state,
    status_of,
    usd,
    wait_until,
    wipe,
    with_keys,
    worst_nano,
)
from .fakes.openai_upstream import Reply
from .servers import free_port

MAX = 50  # max_tokens of the requests below: their worst case is worst_nano(max_tokens=MAX)
W = worst_nano(max_tokens=MAX)


def remaining(answer) -> int:
    return to_nano(float(headers_of(answer)["x-mux-budget-remaining-usd"]))


def cost(answer) -> int:
    return to_nano(float(answer.headers["x-mux-cost-usd"]))


def burst(send, n: int = 50) -> list:
    """Send ``n`` requests at once from ``n`` threads; answer their answers."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: send(i), range(n)))


def held_burst(fake, send, n: int = 50) -> tuple[list, int]:
    """A burst of ``n`` requests whose admitted ones stall at the provider, so every request of the burst meets
    their reservations; answer the answers and how many requests reached the provider."""
    fake.script(*[Reply(stall_s=1.0) for _ in range(n)])
    answers = burst(send, n)
    statuses = [status_of(a) for a in answers]
    assert statuses.count(200) + statuses.count(402) == n, statuses
    reached = len(fake.chat_requests)
    assert statuses.count(200) == reached
    fake.reset()  # no stall left for later requests
    return answers, reached


# ---- concurrency -----------------------------------------------------------------------------------------


def test_fifty_concurrent_requests_on_a_key_budget_that_fits_ten_reach_the_provider_at_most_ten_times(fake_openai):
    keys = {"acme": key("acme", budget_usd=usd(W * 10 + W // 2), budget_period="day")}
    cfg = config(fake_openai.base_url, state="memory", server={"admin_token": "t"})
    with gateway(cfg, layers=with_keys(keys)) as (_, client, _app):
        answers, reached = held_burst(
            fake_openai, lambda i: chat(client, max_tokens=MAX, headers={"x-test-key": "acme"})
        )
    assert reached == 10
    refused = next(a for a in answers if status_of(a) == 402)
    assert refused.response.json()["budget"]["name"] == "key:acme"


def test_a_real_virtual_keys_budget_holds_under_fifty_concurrent_requests_sent_with_api_key(fake_openai):
    """The whole path a user takes: the key in ``keys:`` with ``budget_usd``, sent by the openai SDK as its
    ``api_key`` (and by the anthropic SDK's header, ``x-api-key``)."""
    raw = "sk-virtual-acme-0123456789abcdef"
    cfg = config(
        fake_openai.base_url,
        state="memory",
        keys=[{"name": "acme", "key": raw, "budget_usd": usd(W * 10 + W // 2), "budget_period": "day"}],
    )
    with gateway(cfg) as (url, _, _app):
        with openai.OpenAI(base_url=url + "/v1", api_key=raw, max_retries=0, timeout=20) as client:
            answers, reached = held_burst(fake_openai, lambda i: chat(client, max_tokens=MAX))
        assert reached == 10
        refused = next(a for a in answers if status_of(a) == 402)
        assert refused.response.json()["budget"]["name"] == "key:acme"
        by_header = httpx.post(
            url + "/v1/chat/completions",
            headers={"x-api-key": raw},
            json={"model": "openai/gpt-4o-mini", "messages": HI, "max_tokens": MAX},
        )
        # the admitted ten settled to their real cost, below the worst case: there is room for this one
        assert by_header.status_code == 200 and by_header.headers["x-mux-budget-name"] == "key:acme"
        stranger = httpx.post(
            url + "/v1/chat/completions",
            headers={"x-api-key": "sk-not-a-key-0123456789"},
            json={"model": "openai/gpt-4o-mini", "messages": HI},
        )
        assert stranger.status_code == 401 and stranger.json()["error"]["code"] == "invalid_api_key"
        assert raw not in by_header.text and raw not in str(by_header.headers)


def test_fifty_concurrent_requests_on_an_end_user_budget_that_fits_ten_reach_the_provider_at_most_ten_times(
    fake_openai, tmp_path
):
    cfg = config(
        fake_openai.base_url,
        state=f"sqlite:///{tmp_path}/state.db",
        budgets=[{"name": "per-user", "scope": {"end_user": "*"}, "usd": usd(W * 10 + W // 2), "period": "day"}],
    )
    with gateway(cfg) as (_, client, _app):
        _, reached = held_burst(fake_openai, lambda i: chat(client, max_tokens=MAX, user="user_7"))
        assert reached == 10
        assert status_of(chat(client, max_tokens=MAX, user="user_8")) == 200  # each end user on their own


def test_fifty_concurrent_requests_on_a_tag_budget_that_fits_ten_reach_the_provider_at_most_ten_times(fake_openai):
    state, prefix = redis_state()
    cfg = config(
        fake_openai.base_url,
        state=state,
        state_prefix=prefix,
        budgets=[
            {
                "name": "acme-tenant",
                "scope": {"tag": {"tenant": "acme"}},
                "usd": usd(W * 10 + W // 2),
                "period": "month",
            }
        ],
    )
    try:
        with gateway(cfg) as (_, client, _app):
            _, reached = held_burst(
                fake_openai, lambda i: chat(client, max_tokens=MAX, extra_body={"mlx:tags": {"tenant": "acme"}})
            )
            assert reached == 10
            assert status_of(chat(client, max_tokens=MAX, extra_body={"mlx:tags": {"tenant": "other"}})) == 200
    finally:
        wipe(INPROCESS_DB, prefix)


# ---- the refusal -------------------------------------------------------------------------------------------


def test_a_refusal_is_402_with_exactly_the_documented_body_retry_after_and_a_max_tokens_that_really_fits(fake_openai):
    cap = W * 3 // 2  # one request fits; a second with the same max_tokens does not
    cfg = config(
        fake_openai.base_url,
        state="memory",
        budgets=[{"name": "per-user", "scope": {"end_user": "*"}, "usd": usd(cap), "period": "day"}],
    )
    with gateway(cfg) as (_, client, _app):
        first = chat(client, max_tokens=MAX, user="u1")
        assert status_of(first) == 200
        spent = cost(first)
        refused = chat(client, max_tokens=2000, user="u1")
        assert status_of(refused) == 402
        body = refused.response.json()
        assert set(body) == {"error", "budget"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "insufficient_quota" and body["error"]["code"] == "budget_exceeded"
        assert body["error"]["param"] is None
        assert set(body["budget"]) == {"name", "spend_usd", "cap_usd", "period", "resets_at"}
        assert body["budget"]["name"] == "per-user" and body["budget"]["period"] == "day"
        assert to_nano(body["budget"]["spend_usd"]) == spent and to_nano(body["budget"]["cap_usd"]) == cap
        resets = datetime.fromisoformat(body["budget"]["resets_at"].replace("Z", "+00:00"))
        assert resets.hour == resets.minute == resets.second == 0
        wait = int(refused.response.headers["retry-after"])
        assert 0 < wait <= 86_400 and abs(resets.timestamp() - datetime.now().timestamp() - wait) <= 2
        assert refused.response.headers["x-mux-budget-name"] == "per-user"
        fit = int(re.search(r"largest max_tokens that would fit is (\d+)", body["error"]["message"]).group(1))
        assert 0 < fit < 2000
        assert status_of(chat(client, max_tokens=fit, user="u1")) == 200  # the hint is honest


def test_a_total_budget_refusal_has_no_reset_and_no_retry_after(fake_openai):
    cfg = config(fake_openai.base_url, state="memory", budgets=[{"name": "all", "usd": usd(W // 2), "period": "total"}])
    with gateway(cfg) as (_, client, _app):
        refused = chat(client, max_tokens=MAX)
        assert status_of(refused) == 402
        assert refused.response.json()["budget"]["resets_at"] is None
        assert "retry-after" not in refused.response.headers
        assert refused.response.headers["x-mux-budget-reset"] == "never"
        assert len(fake_openai.chat_requests) == 0


# Each of these runs with the state in this process (the layer awaits the store, in a frame of its own) and in
# SQLite (admitted in memory against the worker's lease, the settle left for the request's end: the fast path).
STATES = pytest.mark.parametrize("kind", ["memory", "sqlite"])


def state_url(kind: str, tmp_path: Any) -> str:
    return "memory" if kind == "memory" else f"sqlite:///{tmp_path}/state.db"


# ---- settle and release -------------------------------------------------------------------------------------


@STATES
def test_settle_counts_the_real_cost_and_every_answer_carries_the_budget_headers(fake_openai, kind, tmp_path):
    cap = W * 20
    cfg = config(
        fake_openai.base_url,
        state=state_url(kind, tmp_path),
        budgets=[{"name": "global-cap", "usd": usd(cap), "period": "week"}],
    )
    with gateway(cfg) as (_, client, _app):
        first = chat(client, max_tokens=MAX)
        second = chat(client, max_tokens=MAX)
        third = chat(client, max_tokens=MAX)  # sees the second one settled
    assert remaining(first) == cap - cost(first)
    assert remaining(second) == cap - cost(first) - cost(second)
    assert remaining(third) == cap - cost(first) - cost(second) - cost(third)
    assert first.headers["x-mux-budget-name"] == "global-cap"
    assert datetime.fromisoformat(first.headers["x-mux-budget-reset"].replace("Z", "+00:00")).weekday() == 0


@STATES
def test_a_stream_settles_after_its_end_to_the_cost_in_its_final_usage(fake_openai, kind, tmp_path):
    cap = W * 20
    cfg = config(
        fake_openai.base_url,
        state=state_url(kind, tmp_path),
        budgets=[{"name": "cap", "usd": usd(cap), "period": "day"}],
    )
    with gateway(cfg) as (_, client, _app):
        with client.chat.completions.with_streaming_response.create(
            model="openai/gpt-4o-mini", messages=HI, max_tokens=MAX, stream=True, stream_options={"include_usage": True}
        ) as response:
            assert to_nano(float(response.headers["x-mux-budget-remaining-usd"])) == cap - W  # running: worst case
            chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        streamed = to_nano(chunks[-1]["usage"]["cost"])
        after = chat(client, max_tokens=MAX)
        last = chat(client, max_tokens=MAX)
    assert streamed > 0 and remaining(after) == cap - streamed - cost(after)
    assert remaining(last) == cap - streamed - cost(after) - cost(last)


@STATES
def test_a_failed_request_releases_its_reservation(fake_openai, kind, tmp_path):
    cap = W * 3 // 2
    cfg = config(
        fake_openai.base_url,
        state=state_url(kind, tmp_path),
        budgets=[{"name": "cap", "usd": usd(cap), "period": "day"}],
    )
    with gateway(cfg) as (_, client, _app):
        warm = chat(client, max_tokens=MAX)  # (with SQLite, the next ones are admitted against the lease)
        fake_openai.script(Reply(status=500))
        assert status_of(chat(client, max_tokens=MAX)) == 502
        after = chat(client, max_tokens=MAX)
        last = chat(client, max_tokens=MAX)  # the cap fits one worst case: the one before it must be settled
    assert status_of(after) == 200 and remaining(after) == cap - cost(warm) - cost(after)
    assert status_of(last) == 200 and remaining(last) == cap - cost(warm) - cost(after) - cost(last)


@STATES
def test_a_client_that_disconnects_mid_stream_releases_its_reservation(fake_openai, kind, tmp_path):
    cap = W * 3 // 2
    cfg = config(
        fake_openai.base_url,
        state=state_url(kind, tmp_path),
        budgets=[{"name": "cap", "usd": usd(cap), "period": "day"}],
    )
    with gateway(cfg) as (url, client, _app):
        warm = chat(client, max_tokens=MAX)  # (with SQLite, the next ones are admitted against the lease)
        fake_openai.script(Reply(content="one two three four five six seven", chunk_delay_s=0.3))
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            timeout=10,
            json={"model": "openai/gpt-4o-mini", "messages": HI, "max_tokens": MAX, "stream": True},
        ) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first chunk arrived; then the client goes away
        record = fake_openai.chat_requests[1]
        wait_until(lambda: record.done.is_set())
        answers = []
        wait_until(
            lambda: answers.append(chat(client, max_tokens=MAX)) or status_of(answers[-1]) == 200, seconds=5, every=0.1
        )
        last = chat(client, max_tokens=MAX)  # the cap fits one worst case: the one before it must be settled
    assert record.disconnected_at is not None and remaining(answers[-1]) == cap - cost(warm) - cost(answers[-1])
    assert status_of(last) == 200 and remaining(last) == cap - cost(warm) - cost(answers[-1]) - cost(last)


# ---- actions -------------------------------------------------------------------------------------------------


@STATES
def test_a_warn_budget_never_refuses_and_only_adds_headers(fake_openai, kind, tmp_path):
    cfg = config(
        fake_openai.base_url,
        state=state_url(kind, tmp_path),
        budgets=[{"name": "soft", "usd": usd(W // 10), "period": "day", "action": "warn"}],
    )
    with gateway(cfg) as (_, client, _app):
        answers = [chat(client, max_tokens=MAX) for _ in range(3)]
    assert [status_of(a) for a in answers] == [200, 200, 200]
    assert all(a.headers["x-mux-budget-name"] == "soft" for a in answers)
    assert answers[-1].headers["x-mux-budget-warning"].startswith("soft ")
    assert answers[-1].headers["x-mux-budget-remaining-usd"] == "0"
    assert len(fake_openai.chat_requests) == 3


@STATES
def test_warn_at_adds_a_warning_header_to_a_block_budget_past_the_fraction(fake_openai, kind, tmp_path):
    cfg = config(
        fake_openai.base_url,
        state=state_url(kind, tmp_path),
        budgets=[{"name": "hard", "usd": usd(W * 6 // 5), "period": "day", "warn_at": 0.05}],
    )
    with gateway(cfg) as (_, client, _app):
        answer = chat(client, max_tokens=MAX)  # costs a little more than 5 % of the cap
    assert cost(answer) >= 0.05 * W * 6 // 5
    assert status_of(answer) == 200 and answer.headers["x-mux-budget-warning"] == "hard 6%"


def test_a_downgrade_budget_serves_the_request_through_its_route_instead_of_refusing(fake_openai):
    big = worst_nano("gpt-4o", max_tokens=MAX)
    cfg = config(
        fake_openai.base_url,
        state="memory",
        routes={"cheap": {"targets": [{"model": "openai/gpt-4o-mini"}]}},
        budgets=[
            {
                "name": "cheapen",
                "scope": {"tag": {"tenant": "acme"}},
                "usd": usd(big // 2),
                "period": "day",
                "action": "downgrade",
                "to": "@cheap",
            }
        ],
    )
    with gateway(cfg) as (_, client, _app):
        acme = chat(client, model="openai/gpt-4o", max_tokens=MAX, extra_body={"mlx:tags": {"tenant": "acme"}})
        other = chat(client, model="openai/gpt-4o", max_tokens=MAX, extra_body={"mlx:tags": {"tenant": "other"}})
    assert status_of(acme) == 200 and acme.headers["x-mux-config"] == "@cheap"
    assert acme.headers["x-mux-budget-name"] == "cheapen"
    assert [r.body["model"] for r in fake_openai.chat_requests] == ["gpt-4o-mini", "gpt-4o"]
    assert status_of(other) == 200 and "x-mux-budget-name" not in other.headers


def test_a_cascade_reserves_the_sum_of_its_targets_and_a_fallback_the_most_expensive(fake_openai):
    mini, big = W, worst_nano("gpt-4o", max_tokens=MAX)
    routes = {
        "fall": {"strategy": "fallback", "targets": [{"model": "openai/gpt-4o-mini"}, {"model": "openai/gpt-4o"}]},
        "casc": {"strategy": "cascade", "targets": [{"model": "openai/gpt-4o-mini"}, {"model": "openai/gpt-4o"}]},
    }
    cfg = config(
        fake_openai.base_url,
        state="memory",
        routes=routes,
        budgets=[{"name": "cap", "usd": usd(big + mini // 2), "period": "day"}],
    )
    with gateway(cfg) as (_, client, _app):
        assert status_of(chat(client, model="@fall", max_tokens=MAX)) == 200
        refused = chat(client, model="@casc", max_tokens=MAX)
    assert status_of(refused) == 402
    assert f"may cost up to {usd_text(big + mini)} USD" in refused.response.json()["error"]["message"]


# ---- the state backend unreachable ----------------------------------------------------------------------------


def test_unreachable_redis_fails_budgets_closed_with_503_naming_the_cause_unless_fail_open(fake_openai):
    dead = f"redis://127.0.0.1:{free_port()}/11"
    log = Recorder()
    cfg = config(
        fake_openai.base_url,
        state=dead,
        budgets=[
            {"name": "strict", "scope": {"end_user": "strict"}, "usd": 1, "period": "day"},
            {"name": "lenient", "scope": {"end_user": "lenient"}, "usd": 1, "period": "day", "fail_open": True},
        ],
    )
    with gateway(cfg, logger=log) as (_, client, _app):
        closed = chat(client, max_tokens=MAX, user="strict")
        opened = chat(client, max_tokens=MAX, user="lenient")
        unbudgeted = chat(client, max_tokens=MAX, user="nobody")
    assert status_of(closed) == 503
    error = closed.response.json()["error"]
    assert error["code"] == "budget_state_unavailable" and "Redis state unreachable" in error["message"]
    assert status_of(opened) == 200 and "x-mux-budget-name" not in opened.headers
    assert status_of(unbudgeted) == 200
    assert len(fake_openai.chat_requests) == 2
    assert log.named("budget_state_unavailable")[0][2]["action"] == "fail_open"


# ---- the hot path -----------------------------------------------------------------------------------------------


class Counting(MemorySpendStore):
    calls = 0

    async def reserve(self, *args):
        Counting.calls += 1
        return await super().reserve(*args)


def test_a_request_no_budget_applies_to_costs_no_store_call_and_a_gateway_counting_nothing_opens_no_state(
    fake_openai, tmp_path
):
    cfg = config(
        fake_openai.base_url,
        state=f"sqlite:///{tmp_path}/never.db",
        server={"admin_token": "t"},
        budgets=[{"name": "acme", "scope": {"tag": {"tenant": "acme"}}, "usd": 1}],
    )
    resources = mux.Resources(cfg)
    resources.spend = Counting()
    Counting.calls = 0
    with gateway(cfg, resources=resources) as (_, client, _app):
        assert status_of(chat(client, max_tokens=MAX)) == 200
        assert Counting.calls == 0
        assert status_of(chat(client, max_tokens=MAX, headers={"x-mux-tags": "tenant=acme"})) == 200
        assert Counting.calls == 1
    idle = config(fake_openai.base_url, state=f"sqlite:///{tmp_path}/idle.db", server={"admin_token": "t"})
    with gateway(idle) as (_, client, app):
        assert BudgetLayer in [type(layer) for layer in layers_of(app.app)]  # present: keys could exist
        assert status_of(chat(client, max_tokens=MAX)) == 200
        assert not app.resources.spend.opened and not app.resources.limits.opened  # (the key store opened the file)
    plain = config(fake_openai.base_url, state=f"sqlite:///{tmp_path}/plain.db")
    with gateway(plain) as (_, client, app):  # no keys possible, no budget, no limit: nothing counts
        assert BudgetLayer not in [type(layer) for layer in layers_of(app.app)]
        assert status_of(chat(client, max_tokens=MAX)) == 200
    assert not (tmp_path / "plain.db").exists()


def layers_of(app):
    while hasattr(app, "app"):
        yield app
        app = app.app
