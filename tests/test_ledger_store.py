"""The ledger stores: the same tests on SQLite and on the real PostgreSQL (the ``backend`` fixture)."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

from mux.errors import InvalidRequest
from mux.ledger import LedgerRow, nano_usd
from mux.ledger import postgres as postgres_schema
from mux.ledger import sqlite as sqlite_schema
from mux.ledger.sql import PARTIAL_INDEXES
from mux.ledger.sqlite import SQLiteLedgerStore
from tests.ledger_backends import analyze, backend, count, mixed_rows, postgres_available, values  # noqa: F401

NOW = 1_750_000_000.0  # a fixed time: 2025-06-15T15:06:40Z
DAY = 86400


def full_row(**fields) -> LedgerRow:
    values = dict(
        request_id="req-full",
        created_at=NOW,
        response_id="chatcmpl-full",
        key_name="key-a",
        team="search",
        end_user="alice",
        tags={"env": "prod", "app": "chat"},
        session_id="sess-1",
        model_requested="@production",
        model_used="gpt-4o-mini",
        provider="openai",
        route="production",
        route_version=3,
        strategy="fallback",
        status=200,
        error_code=None,
        attempts=2,
        prompt_tokens=1200,
        completion_tokens=345,
        cached_tokens=1024,
        cache_write_tokens=64,
        reasoning_tokens=128,
        cost_nano=nano_usd(0.000123456),
        latency_ms=812.5,
        ttfb_ms=143.25,
        stream=True,
        cache_status="miss",
        budget_outcome="admitted",
        rate_limit_outcome="admitted",
        finish_reason="stop",
        trace={"schema": 1, "attempts": [{"provider": "openai", "status": 200}]},
        request_body=b'{"model":"@production"}',
        response_body=b'{"id":"chatcmpl-full"}',
    )
    values.update(fields)
    return LedgerRow(**values)


def test_a_row_reads_back_whole_by_request_id_or_response_id(backend):
    row = full_row()

    async def scenario(store):
        await store.write(values([row]))
        return await store.get("req-full"), await store.get("chatcmpl-full"), await store.get("nope")

    by_request, by_response, missing = backend.run(scenario)
    assert by_request == row and by_response == row and missing is None
    assert by_request.cost_nano == 123456 and by_request.cost_usd == 0.000123456


def test_writes_are_idempotent_by_request_id(backend):
    rows = mixed_rows(50, start=NOW, span_s=60)
    more = mixed_rows(10, start=NOW, span_s=60, prefix="more")

    async def scenario(store):
        first = await store.write(values(rows))
        replay = await store.write(values(rows))
        overlap = await store.write(values(rows[:5] + more + more[:3]))  # replayed rows, new rows, a duplicate within
        return first, replay, overlap, await count(store), await store.spend(0)

    first, replay, overlap, total, spent = backend.run(scenario)
    assert (first, replay, overlap, total) == (50, 0, 10, 60)
    assert spent == sum(r.cost_nano for r in rows + more)


def test_get_with_another_keys_name_answers_none(backend):
    async def scenario(store):
        await store.write(
            values([full_row(), full_row(request_id="req-b", response_id="chatcmpl-b", key_name="key-b")])
        )
        return [
            await store.get(i, k)
            for i, k in [
                ("req-full", "key-b"),
                ("chatcmpl-full", "key-b"),
                ("req-full", "key-a"),
                ("chatcmpl-b", "key-b"),
                ("chatcmpl-b", None),
            ]
        ]

    other_by_request, other_by_response, own, own_b, admin = backend.run(scenario)
    assert other_by_request is None and other_by_response is None
    assert own.request_id == "req-full" and own_b.request_id == "req-b" and admin.request_id == "req-b"


def test_get_prefers_the_request_id_then_the_newest_response(backend):
    # a cached answer can carry the id of the response it replays: the id then names several rows
    rows = [
        full_row(request_id="r-old", response_id="chatcmpl-x", created_at=NOW),
        full_row(request_id="r-new", response_id="chatcmpl-x", created_at=NOW + 5),
        full_row(request_id="chatcmpl-y", response_id=None, created_at=NOW - 5),
        full_row(request_id="r-z", response_id="chatcmpl-y", created_at=NOW + 9),
    ]

    async def scenario(store):
        await store.write(values(rows))
        return (await store.get("chatcmpl-x")).request_id, (await store.get("chatcmpl-y")).request_id

    assert backend.run(scenario) == ("r-new", "chatcmpl-y")


def newest_first(rows):
    return sorted(rows, key=lambda r: (r.created_at, r.request_id), reverse=True)


def test_requests_pages_newest_first_without_gaps_or_repeats(backend):
    rows = mixed_rows(60, start=NOW, span_s=600)
    rows += [full_row(request_id=f"same-{i}", response_id=None, created_at=NOW + 300) for i in range(9)]  # ties

    async def scenario(store):
        await store.write(values(rows))
        pages, cursor = [], None
        while True:
            page, cursor = await store.requests(limit=7, cursor=cursor)
            pages.append(page)
            if cursor is None:
                return pages

    pages = backend.run(scenario)
    assert [len(p) for p in pages] == [7] * 9 + [6]
    listed = [r for p in pages for r in p]
    expected = [
        LedgerRow(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "request_body": None, "response_body": None})
        for r in newest_first(rows)
    ]
    assert listed == expected  # whole rows, without bodies


def test_requests_filters_by_key_status_model_and_tag(backend):
    rows = mixed_rows(300, start=NOW, span_s=3 * DAY)
    filters = [
        dict(key="key-b"),
        dict(status=429),
        dict(model="claude-haiku"),
        dict(tag=("env", "dev")),
        dict(key="key-a", status=200, model="gpt-4o-mini", tag=("app", "rag")),
    ]

    def matches(r, key=None, status=None, model=None, tag=None):
        return (
            (key is None or r.key_name == key)
            and (status is None or r.status == status)
            and (model is None or r.model_used == model)
            and (tag is None or r.tags.get(tag[0]) == tag[1])
        )

    async def scenario(store):
        await store.write(values(rows))
        answers = []
        for f in filters:
            ids, cursor = [], None
            while True:
                page, cursor = await store.requests(limit=40, cursor=cursor, **f)
                ids += [r.request_id for r in page]
                if cursor is None:
                    break
            answers.append(ids)
        return answers

    for f, ids in zip(filters, backend.run(scenario), strict=False):
        expected = [r.request_id for r in newest_first(rows) if matches(r, **f)]
        assert ids == expected and expected, f


def test_requests_limit_is_bounded_and_a_bad_cursor_is_refused(backend):
    rows = [LedgerRow(request_id=f"r{i:04d}", created_at=NOW + i) for i in range(510)]

    async def scenario(store):
        await store.write(values(rows))
        page, cursor = await store.requests(limit=10_000)
        with pytest.raises(InvalidRequest) as bad_cursor:
            await store.requests(cursor="not-a-cursor")
        with pytest.raises(InvalidRequest) as bad_limit:
            await store.requests(limit=0)
        return len(page), cursor, bad_cursor.value.param, bad_limit.value.param

    size, cursor, cursor_param, limit_param = backend.run(scenario)
    assert size == 500 and cursor is not None and (cursor_param, limit_param) == ("cursor", "limit")


def reference_percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return None
    position = p * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def expected_analytics(rows, from_ts, to_ts, group_by, seconds):
    def group(r):
        if group_by.startswith("tag:"):
            return r.tags.get(group_by[4:])
        return getattr(r, {"key": "key_name", "model": "model_used"}.get(group_by, group_by))

    cells = defaultdict(list)
    for r in rows:
        if from_ts <= r.created_at < to_ts:
            cells[(group(r), math.floor(r.created_at / seconds) * seconds)].append(r)
    totals = defaultdict(int)
    for (g, _), rs in cells.items():
        totals[g] += len(rs)
    rank = sorted(totals, key=lambda g: (-totals[g], g is None, g or ""))
    answer = []
    for (g, bucket), rs in sorted(cells.items(), key=lambda c: (rank.index(c[0][0]), c[0][1])):
        cell = {"group": g, "bucket": bucket, "requests": len(rs), "errors": sum(r.status >= 400 for r in rs)}
        for f in (
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_nano",
        ):
            cell[f] = sum(getattr(r, f) for r in rs)
        cell["cost_usd"] = cell["cost_nano"] / 1e9
        for metric in ("latency_ms", "ttfb_ms"):
            values = [getattr(r, metric) for r in rs if getattr(r, metric) is not None]
            cell[metric] = {f"p{round(p * 100)}": reference_percentile(values, p) for p in (0.5, 0.95, 0.99)}
        answer.append(cell)
    return answer


def approx_cells(cells):
    return [
        {
            k: (
                pytest.approx(v, rel=1e-9, abs=1e-9)
                if isinstance(v, float)
                else {kk: pytest.approx(vv, rel=1e-9) if vv is not None else None for kk, vv in v.items()}
                if isinstance(v, dict)
                else v
            )
            for k, v in c.items()
        }
        for c in cells
    ]


def test_analytics_sums_equal_the_sums_over_the_rows(backend):
    rows = mixed_rows(400, start=NOW - 2 * DAY, span_s=2 * DAY)
    from_ts, to_ts = NOW - 30 * 3600 - 0.5, NOW - 1800  # partial buckets at both ends
    queries = [(g, "hour") for g in ("key", "model")] + [
        (g, "day") for g in ("team", "end_user", "provider", "route", "tag:env", "tag:app")
    ]

    async def scenario(store):
        await store.write(values(rows))
        return [await store.analytics(from_ts, to_ts, g, i) for g, i in queries]

    for (group_by, interval), answer in zip(queries, backend.run(scenario), strict=False):
        expected = expected_analytics(rows, from_ts, to_ts, group_by, 3600 if interval == "hour" else DAY)
        assert answer == approx_cells(expected), (group_by, interval)
        assert sum(c["cost_nano"] for c in answer) == sum(r.cost_nano for r in rows if from_ts <= r.created_at < to_ts)


def test_analytics_answers_only_the_busiest_groups_and_refuses_bad_arguments(backend):
    sizes = {None: 40, "busy": 30, "mid": 20, "tie-b": 10, "tie-a": 10}
    rows = [
        LedgerRow(request_id=f"{key}-{i}", created_at=NOW + i, key_name=key)
        for key, size in sizes.items()
        for i in range(size)
    ]

    async def scenario(store):
        await store.write(values(rows))
        top = await store.analytics(NOW, NOW + 200, "key", "hour", max_groups=4)
        params = []
        for args in [("key", "week"), ("colour", "hour"), ("tag:", "hour")]:
            with pytest.raises(InvalidRequest) as refused:
                await store.analytics(NOW, NOW + 3600, *args)
            params.append(refused.value.param)
        with pytest.raises(InvalidRequest) as too_wide:
            await store.analytics(NOW - 365 * DAY, NOW, "key", "hour")
        return top, params, too_wide.value.param

    top, params, too_wide = backend.run(scenario)
    assert [(c["group"], c["requests"]) for c in top] == [(None, 40), ("busy", 30), ("mid", 20), ("tie-a", 10)]
    assert params == ["interval", "group_by", "group_by"] and too_wide == "from"


def test_spend_sums_a_scope_since_a_time(backend):
    rows = mixed_rows(300, start=NOW - 10 * DAY, span_s=10 * DAY)
    since = NOW - 3 * DAY
    scopes = [
        {},
        {"key_name": "key-a"},
        {"team": "ads"},
        {"end_user": "u2"},
        {"tag": ("env", "prod")},
        {"key_name": "key-c", "tag": ("app", "chat")},
        {"tags": {"env": "prod", "app": "rag"}},
        {"team": "ads", "tag": ("env", "dev"), "tags": {"app": "chat"}},
    ]

    def matches(r, key_name=None, team=None, end_user=None, tag=None, tags=None):
        wanted = {**dict([tag] if tag else []), **(tags or {})}
        return (
            r.created_at >= since
            and (key_name is None or r.key_name == key_name)
            and (team is None or r.team == team)
            and (end_user is None or r.end_user == end_user)
            and all(r.tags.get(name) == value for name, value in wanted.items())
        )

    async def scenario(store):
        await store.write(values(rows))
        return [await store.spend(since, **s) for s in scopes]

    for scope, spent in zip(scopes, backend.run(scenario), strict=False):
        expected = sum(r.cost_nano for r in rows if matches(r, **scope))
        assert spent == expected and expected > 0, scope
        assert isinstance(spent, int)


def test_the_main_queries_use_their_indexes(backend):
    # 10 000 rows over 40 days and 200 keys, the statistics refreshed: the plans are the ones a real ledger gets
    rows = [
        LedgerRow(
            request_id=f"r{i:05d}",
            created_at=NOW - 40 * DAY + i * 345.6,
            response_id=f"chatcmpl-{i}",
            key_name=f"key-{i % 200}",
            team=f"team-{i % 50}",
            end_user=f"user-{i % 300}",
            model_used="rare" if i % 1000 == 0 else f"model-{i % 20}",
            tags={"env": f"e{i % 40}"},
            cost_nano=i,
        )
        for i in range(10_000)
    ]
    queries = {
        "get by request id": (("get", "r00007", "key-7"), {}, "ledger_pkey|sqlite_autoindex_ledger_1"),
        "get by response id": (("get", "chatcmpl-7", "key-7"), {}, "ledger_response"),
        "recent requests": (("requests",), {}, "ledger_time"),
        "requests of a key": (("requests",), {"key": "key-5", "status": 200}, "ledger_key_time"),
        "requests of a model": (("requests",), {"model": "rare"}, "ledger_model_time"),
        "requests with a tag": (("requests",), {"tag": ("env", "e3")}, "ledger_tags_lookup"),
        "spend of a key": (("spend", NOW - DAY), {"key_name": "key-5"}, "ledger_key_time"),
        "spend of a team": (("spend", NOW - DAY), {"team": "team-5"}, "ledger_team_time"),
        "spend of an end user": (("spend", NOW - DAY), {"end_user": "user-5"}, "ledger_end_user_time"),
        "spend of a tag": (("spend", NOW - DAY), {"tag": ("env", "e5")}, "ledger_tags_lookup"),
        "analytics by key": (("analytics", NOW - DAY, NOW, "key", "hour"), {}, "ledger_time"),
        "analytics by tag": (("analytics", NOW - DAY, NOW, "tag:env", "hour"), {}, "ledger_time"),
    }

    async def scenario(store):
        await store.write(values(rows))
        await analyze(store)
        return {name: await store.explain(*args, **kwargs) for name, (args, kwargs, _) in queries.items()}

    plans = backend.run(scenario)
    for name, (_, _, index) in queries.items():
        plan = plans[name]
        assert any(i in plan for i in index.split("|")), f"{name}:\n{plan}"
        assert "Seq Scan on ledger " not in plan and "SCAN l\n" not in plan + "\n", f"{name}:\n{plan}"


def test_a_nul_character_in_a_client_tag_does_not_fail_the_write(backend):
    row = full_row(request_id="req-nul", tags={"env\x00": "pr\x00od"}, end_user="a\x00b", trace={"note": "\x00"})

    async def scenario(store):
        written = await store.write(values([row]))
        return written, await store.get("req-nul"), await store.requests(tag=("env\x00", "pr\x00od"))

    written, got, (tagged, _) = backend.run(scenario)
    assert written == 1 and got.trace == {"note": "\x00"} and got.tags == {"env\x00": "pr\x00od"}
    assert [r.request_id for r in tagged] == ["req-nul"]
    # PostgreSQL text holds no NUL: there it is stored (and looked up) as U+FFFD
    assert got.end_user == ("a\ufffdb" if backend.kind == "postgres" else "a\x00b")


def test_the_schema_is_versioned_and_a_newer_one_is_refused(backend):
    async def first(store):
        await store.write(values([full_row()]))
        return await store._fetch(f"SELECT version FROM {store.ledger}_schema_version ORDER BY version", [])

    assert [tuple(v) for v in backend.run(first)] == [(1,), (2,)]

    async def reopened(store):  # the schema exists: opening again keeps the rows and adds no version
        versions = await store._fetch(f"SELECT version FROM {store.ledger}_schema_version ORDER BY version", [])
        await store._fetch(f"INSERT INTO {store.ledger}_schema_version VALUES (3, 0)", [])
        return [tuple(v) for v in versions], await count(store)

    assert backend.run(reopened) == ([(1,), (2,)], 1)
    with pytest.raises(RuntimeError, match="schema is version 3"):
        backend.run(first)


def test_a_version_1_ledger_is_migrated_keeping_its_rows_and_its_indexes_become_partial(backend):
    rows = [full_row(), full_row(request_id="req-anon", response_id=None, key_name=None, team=None, end_user=None)]

    async def version_1(store):  # the schema as version 1 left it, with rows in it
        s = getattr(store, "schema", None)
        statements = MIGRATIONS_V1[backend.kind](f'"{s}"' if s else "")
        await store._fetch(f"DROP TABLE {store.ledger}", [])
        await store._fetch(f"DROP TABLE {store.tags}", [])
        await store._fetch(f"DELETE FROM {store.ledger}_schema_version WHERE version > 1", [])
        for statement in statements:
            await store._fetch(statement, [])
        await store.write(values(rows))

    async def reopened(store):
        versions = await store._fetch(f"SELECT version FROM {store.ledger}_schema_version ORDER BY version", [])
        return [tuple(v) for v in versions], await count(store), await store.get("req-anon"), await indexes(store)

    backend.run(version_1)
    versions, total, anonymous, defined = backend.run(reopened)
    assert versions == [(1,), (2,)] and total == 2 and anonymous.request_id == "req-anon"
    for name, columns in PARTIAL_INDEXES.items():
        assert f"{columns.split(',')[0]} IS NOT NULL" in defined[name], (name, defined[name])
    assert "WHERE" not in defined["ledger_time"]


MIGRATIONS_V1 = {
    "sqlite": lambda _: sqlite_schema.SCHEMA_V1,
    "postgres": postgres_schema.schema_v1,
}


async def indexes(store) -> dict[str, str]:
    """Answer the ledger's index definitions by name."""
    if isinstance(store, SQLiteLedgerStore):
        found = await store._fetch(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'", []
        )
    else:
        found = await store._fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'ledger'", [store.schema]
        )
    return {name: sql or "" for name, sql in found}
