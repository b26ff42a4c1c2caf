"""Budgets read their history from the request ledger: with ``state: memory``, a restarted gateway starts each
budget from what the ledger holds for its scope this period; with SQLite state (which keeps its spend) the
ledger adds nothing. End to end through the openai SDK over real sockets against the fake OpenAI, the ledger
in a SQLite file that outlives the gateways; and the scope -> ledger filter mapping and the seeding itself."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from mux.ledger import LedgerRow, LedgerWriter
from mux.ledger.seed import LedgerSeed, ledger_filters
from mux.ledger.sqlite import SQLiteLedgerStore
from mux.money.scopes import Scope, conditions, key_scope
from mux.money.units import to_nano
from mux.stores import StoreUnavailable
from mux.stores.spend import BudgetWindow
from mux.stores.spend.memory import MemorySpendStore

from .budget_helpers import chat, config, gateway, headers_of, key, status_of, usd, with_keys, worst_nano
from .fakes.openai_upstream import Reply

MAX = 100
W = worst_nano(max_tokens=MAX)
CAP = 2 * W + W // 2  # two answers of about their worst case fit; after them, a third does not
TAGS = {"tenant": "acme", "env": "prod"}
LONG = " ".join(f"w{i}" for i in range(MAX))  # an answer cut at max_tokens: it costs about its worst case
KEYS = {"acme": key("acme", team="search"), "other": key("other", team="search")}


def remaining(answer) -> int:
    return to_nano(float(headers_of(answer)["x-mux-budget-remaining-usd"]))


def cost(answer) -> int:
    return to_nano(float(answer.headers["x-mux-cost-usd"]))


def ask(client, key_name: str, tags: dict | None = None, max_tokens: int = MAX):
    body = {"mlx:tags": tags} if tags else None
    return chat(client, max_tokens=max_tokens, headers={"x-test-key": key_name}, extra_body=body)


def budget_config(fake_openai, tmp_path, state: str):
    budgets = [{"name": "acme-prod", "scope": {"key": "acme", "tag": TAGS}, "usd": usd(CAP), "period": "day"}]
    ledger = {"store": f"sqlite:///{tmp_path / 'ledger.db'}"}
    return config(fake_openai.base_url, state=state, ledger=ledger, budgets=budgets)


def test_a_memory_budget_restarts_from_the_spend_its_ledger_holds_and_refuses_what_no_longer_fits(
    fake_openai, tmp_path
):
    cfg = budget_config(fake_openai, tmp_path, "memory")
    with gateway(cfg, layers=with_keys(KEYS)) as (_, client, _app):
        fake_openai.script(*[Reply(content=LONG)] * 4)
        spent = [ask(client, "acme", TAGS), ask(client, "acme", TAGS)]
        outside = [ask(client, "acme", {"tenant": "acme"}), ask(client, "other", TAGS)]  # not in its scope
    assert [status_of(a) for a in spent + outside] == [200] * 4
    before = remaining(spent[-1])
    assert before == CAP - sum(cost(a) for a in spent) < W

    with gateway(cfg, layers=with_keys(KEYS)) as (_, client, _app):  # a new process's memory, the same ledger
        refused = ask(client, "acme", TAGS)
        small = ask(client, "acme", TAGS, max_tokens=1)
    assert status_of(refused) == 402 and remaining(refused) == before
    assert to_nano(refused.response.json()["budget"]["spend_usd"]) == CAP - before
    assert status_of(small) == 200 and remaining(small) == before - cost(small)


def test_a_sqlite_budget_with_a_ledger_counts_its_spend_once_across_a_restart(fake_openai, tmp_path):
    cfg = budget_config(fake_openai, tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    with gateway(cfg, layers=with_keys(KEYS)) as (_, client, _app):
        fake_openai.script(Reply(content=LONG))
        first = ask(client, "acme", TAGS)
    with gateway(cfg, layers=with_keys(KEYS)) as (_, client, _app):
        again = ask(client, "acme", TAGS, max_tokens=1)
    assert status_of(first) == status_of(again) == 200
    assert remaining(again) == CAP - cost(first) - cost(again)


@pytest.mark.parametrize(
    ("scope", "asked", "filters"),
    [
        (Scope(), ("k", "t", "u", {"a": "b"}), {}),
        (Scope(key="acme"), ("acme", None, None, {}), {"key_name": "acme"}),
        (Scope(team="*"), ("k", "search", None, {}), {"team": "search"}),
        (Scope(end_user="*"), (None, None, "user&team:x=1", {}), {"end_user": "user&team:x=1"}),
        (
            Scope(tags={"tenant": "*", "env": "prod"}),
            (None, None, None, {"tenant": "a,b=c", "env": "prod", "other": "x"}),
            {"tags": {"env": "prod", "tenant": "a,b=c"}},
        ),
        (
            Scope(key="*", team="search", end_user="*", tags={"app": "chat"}),
            ("k%20", "search", "ü", {"app": "chat"}),
            {"key_name": "k%20", "team": "search", "end_user": "ü", "tags": {"app": "chat"}},
        ),
    ],
)
def test_a_scope_key_maps_to_the_ledger_filters_of_the_requests_it_counts(scope, asked, filters):
    assert ledger_filters(scope.of(*asked)) == filters
    assert ledger_filters(key_scope("a&b:c")) == {"key_name": "a&b:c"}


@pytest.mark.parametrize("bogus", ["", "key", "keys:a", "key:a&key:b", "tag:a", "tag:a=b&tag:c=d"])
def test_a_string_no_scope_answers_is_refused(bogus):
    with pytest.raises(ValueError):
        conditions(bogus)


def test_a_memory_counter_is_seeded_once_before_its_first_reservation_and_a_failed_seed_is_retried():
    asked: list[tuple[str, int]] = []
    failing = [True]

    async def seed(scope_key: str, since: int) -> int:
        asked.append((scope_key, since))
        await asyncio.sleep(0.01)
        if failing[0]:
            failing[0] = False
            raise StoreUnavailable("the request ledger cannot be read: OSError")
        return 700

    window = BudgetWindow("b", "team:search", 1000, "day")
    now = 86_400 * 20_000 + 5.0

    async def scenario():
        store = MemorySpendStore(clock=lambda: now, seed=seed)
        with pytest.raises(StoreUnavailable):
            await store.reserve("r0", [window], 100, 60)
        answers = await asyncio.gather(*(store.reserve(f"r{i}", [window], 100, 60) for i in range(1, 5)))
        return answers, await store.usage(window)

    answers, usage = asyncio.run(scenario())
    assert asked == [("team:search", 86_400 * 20_000)] * 2  # the failed seed, then one for four reservations
    assert [a.admitted for a in answers] == [True, True, True, False]  # 700 + 3 * 100 = the cap
    assert usage == (700, 300)


def test_the_ledger_seed_counts_the_rows_this_process_still_has_queued(tmp_path):
    async def scenario() -> tuple[int, int]:
        store = SQLiteLedgerStore(str(tmp_path / "ledger.db"))
        await store.open()
        writer = LedgerWriter(store, flush_ms=60_000)  # rows wait for a batch of 500, or a flush
        writer.start()
        try:
            row = LedgerRow(request_id="r1", created_at=100.0, status=200, team="search", cost_nano=1234)
            writer.submit(row)
            writer.submit(msgspec.structs.replace(row, request_id="r2", created_at=99.0))  # before the period
            writer.submit(msgspec.structs.replace(row, request_id="r3", team="ads"))  # another scope
            return await LedgerSeed(writer)("team:search", 100), writer.stats.queue_depth
        finally:
            await writer.aclose()
            await store.close()

    assert asyncio.run(scenario()) == (1234, 0)
