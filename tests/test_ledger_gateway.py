"""The request ledger wired into the gateway, end to end: the official openai SDK over real sockets, a strict
fake OpenAI upstream, and the ledger on SQLite (a temporary file) and on the real PostgreSQL (a schema made
for the test and dropped after it; unreachable is a failure, never a skip).

Rows are read back after the gateway has shut down (its lifespan shutdown writes every queued row), by a
store opened on the same database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import mux
from mux.ledger import LedgerRow, LedgerWriter, nano_usd, store_from_url
from mux.ledger.sql import SqlLedgerStore
from tests.conftest import CLIENT_KEY, gateway_config
from tests.fakes.openai_upstream import Reply
from tests.ledger_backends import PG_DSN, RUN_ID, _pg, postgres_available  # noqa: F401
from tests.servers import free_port, serve

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "admin-token-for-ledger-tests"
KEYS = {"alice": "sk-virtual-alice-0123456789", "bob": "sk-virtual-bob-0123456789"}
MODEL = "openai/gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello there"}]


# --- fixtures and helpers --------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The ``ledger:`` config section of one test's database."""
    if request.param == "sqlite":
        yield {"store": f"sqlite:///{tmp_path / 'ledger.db'}"}
        return
    request.getfixturevalue("postgres_available")
    schema = f"mux_ledger_gw_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    try:
        yield {"store": PG_DSN, "schema": schema}
    finally:
        asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def config_of(fake_url: str, ledger: dict[str, Any], keys: bool = False, **ledger_options: Any) -> mux.Config:
    data = gateway_config(fake_url)
    data["ledger"] = {**ledger, **ledger_options}
    data["server"] = {"admin_token": ADMIN_TOKEN}
    data["state"] = "memory"  # the admin token opens the key store: keep it out of the working tree
    if keys:
        data["keys"] = [{"name": name, "key": key, "team": f"t-{name}"} for name, key in KEYS.items()]
    return mux.parse_config(data)


@contextmanager
def gateway(
    fake_url: str, ledger: dict[str, Any], *, layers: Any = mux.stack, keys: bool = False, **options: Any
) -> Iterator[str]:
    """Serve a gateway with ``ledger`` (and the virtual keys ``KEYS`` if asked); yield its URL. Leaving the block
    shuts it down (and so flushes)."""
    app = mux.build_app(config_of(fake_url, ledger, keys, **options), layers=layers)
    with serve(app) as url:
        yield url


def sdk(url: str, key: str = CLIENT_KEY, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10, default_headers=headers)


def rows_of(ledger: dict[str, Any]) -> list[LedgerRow]:
    """Every row of the ledger, read by a store of its own."""

    async def read() -> list[LedgerRow]:
        store = store_from_url(ledger["store"], schema=ledger.get("schema", "public"))
        await store.open()
        try:
            rows, cursor = await store.requests(limit=500)
            while cursor is not None:
                more, cursor = await store.requests(limit=500, cursor=cursor)
                rows += more
            return rows
        finally:
            await store.close()

    return asyncio.run(read())


def count_of(ledger: dict[str, Any]) -> int:
    async def count() -> int:
        store: SqlLedgerStore = store_from_url(ledger["store"], schema=ledger.get("schema", "public"))  # type: ignore
        await store.open()
        try:
            return (await store._fetch(f"SELECT COUNT(*) FROM {store.ledger}", []))[0][0]
        finally:
            await store.close()

    return asyncio.run(count())


def admin_get(url: str, path: str, token: str = ADMIN_TOKEN, **params: Any) -> httpx.Response:
    return httpx.get(url + path, params=params, headers={"authorization": f"Bearer {token}"}, timeout=10)


def generation(client: openai.OpenAI, id: str) -> dict[str, Any]:
    return client.get("/generation", cast_to=object, options={"params": {"id": id}})["data"]  # type: ignore[index]


def request_id_of(error: openai.APIStatusError) -> str:
    return error.response.headers["x-mux-request-id"]


# --- one row per request, whatever became of it ------------------------------------------------------------------


def test_every_outcome_leaves_exactly_one_row_per_request_and_a_replay_adds_none(fake_openai, ledger):
    seen: dict[str, int] = {}  # x-mux-request-id -> the status the client saw (499: it went away)
    with gateway(fake_openai.base_url, ledger) as url, sdk(url) as client:
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
            seen[raw.headers["x-mux-request-id"]] = raw.status_code

            with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=HELLO, stream=True
            ) as response:
                list(response.iter_lines())
                seen[response.headers["x-mux-request-id"]] = response.status_code

            fake_openai.script(Reply(status=500))
            with pytest.raises(openai.APIStatusError) as upstream:
                client.chat.completions.create(model=MODEL, messages=HELLO)
            seen[request_id_of(upstream.value)] = upstream.value.status_code

            with pytest.raises(openai.BadRequestError) as bad:
                client.chat.completions.create(model=MODEL, messages=HELLO, temperature=7)
            seen[request_id_of(bad.value)] = 400

            with pytest.raises(openai.NotFoundError) as unknown:
                client.chat.completions.create(model="no-such-model-anywhere", messages=HELLO)
            seen[request_id_of(unknown.value)] = 404

            fake_openai.script(Reply(content=" ".join(f"w{i}" for i in range(200)), chunk_delay_s=0.02))
            stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            chunks = iter(stream)
            next(chunks), next(chunks)
            seen[stream.response.headers["x-mux-request-id"]] = 499
            stream.close()
            record = fake_openai.last
            assert fake_openai.wait_done(record, timeout=5)

        fake_openai.script(Reply(stall_s=3))  # a plain request whose client gives up before any answer
        with pytest.raises(openai.APITimeoutError), sdk(url) as impatient:
            impatient.with_options(timeout=0.3).chat.completions.create(model=MODEL, messages=HELLO)
        assert fake_openai.wait_done(fake_openai.last, timeout=5)

        assert httpx.get(url + "/healthz").status_code == 200  # not an LLM request: no row
    rows = rows_of(ledger)

    assert len(rows) == 13 and len(seen) == 12
    (gone,) = [r for r in rows if r.request_id not in seen]  # its client never saw its id
    assert (gone.status, gone.error_code, gone.stream, gone.ttfb_ms) == (499, "client_disconnected", False, None)
    assert {r.request_id: r.status for r in rows if r is not gone} == seen
    assert Counter(r.status for r in rows)[502] == 2 and Counter(r.status for r in rows)[200] == 4
    by_status = {r.status: r for r in rows if r is not gone}
    assert by_status[404].error_code == "model_not_found" and by_status[400].error_code is not None
    assert by_status[499].error_code == "client_disconnected" and by_status[499].stream
    assert all(r.request_body is None and r.response_body is None for r in rows)
    answered = [r for r in rows if r.status == 200]
    assert all(
        r.model_used == "gpt-4o-mini-2024-07-18"
        and r.provider == "openai"
        and r.cost_nano > 0
        and r.prompt_tokens > 0
        and r.response_id
        and r.finish_reason == "stop"
        for r in answered
    )
    assert sorted(r.stream for r in answered) == [False, False, True, True]

    async def replay() -> Any:  # the same rows again, as a retried flush would write them
        writer = LedgerWriter(store_from_url(ledger["store"], schema=ledger.get("schema", "public")))
        await writer.store.open()
        writer.start()
        for row in rows:
            writer.submit(row)
        await writer.aclose()
        await writer.store.close()
        return writer.stats

    stats = asyncio.run(replay())
    assert stats.duplicates == 13 and stats.written == 0 and count_of(ledger) == 13


# --- the generation lookup ---------------------------------------------------------------------------------------


def test_generation_lookup_right_after_the_answer_returns_what_the_response_said(fake_openai, ledger):
    # flush_ms of 10 s: only the lookup's own flush can have written the row this soon
    with (
        gateway(fake_openai.base_url, ledger, flush_ms=10_000) as url,
        sdk(url) as client,
        openai.OpenAI(base_url=url + "/api/v1", api_key=CLIENT_KEY, max_retries=0) as api,
    ):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, extra_body={"mlx:tags": {"team": "search"}, "mlx:end_user": "u-7"}
        )
        completion = raw.parse()
        by_response = generation(client, completion.id)
        by_request = generation(api, raw.headers["x-mux-request-id"])

        stream = client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        streamed = generation(client, chunks[0].id)

        with pytest.raises(openai.NotFoundError) as unknown:
            generation(client, "chatcmpl-never-answered")
        with pytest.raises(openai.BadRequestError) as missing:
            client.get("/generation", cast_to=object)

    assert by_response == by_request
    assert by_response["id"] == completion.id and by_response["request_id"] == raw.headers["x-mux-request-id"]
    usage = completion.usage
    assert by_response["tokens_prompt"] == usage.prompt_tokens
    assert by_response["tokens_completion"] == usage.completion_tokens
    assert by_response["total_cost"] == pytest.approx(usage.cost, abs=1e-9)  # type: ignore[attr-defined]
    assert by_response["total_cost"] == pytest.approx(float(raw.headers["x-mux-cost-usd"]), abs=1e-9)
    assert by_response["model"] == completion.model and by_response["provider_name"] == "openai"
    assert by_response["tags"] == {"team": "search"} and by_response["end_user"] == "u-7"
    assert by_response["finish_reason"] == completion.choices[0].finish_reason == "stop"
    assert by_response["streamed"] is False and by_response["cancelled"] is False
    assert by_response["latency"] >= by_response["generation_time"] > 0
    assert by_response["created_at"].endswith("+00:00")
    assert abs(time.time() - _epoch(by_response["created_at"])) < 30

    final = chunks[-1].usage
    assert streamed["id"] == chunks[0].id and streamed["streamed"] is True
    assert streamed["tokens_prompt"] == final.prompt_tokens
    assert streamed["tokens_completion"] == final.completion_tokens
    assert streamed["total_cost"] == pytest.approx(final.cost, abs=1e-9)  # type: ignore[attr-defined]
    assert streamed["finish_reason"] == "stop"

    assert unknown.value.body["code"] == "not_found"  # type: ignore[index]
    assert set(unknown.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert missing.value.body["param"] == "id"  # type: ignore[index]


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_a_key_reads_its_own_generations_only_and_the_admin_reads_all(fake_openai, ledger):
    with (
        gateway(fake_openai.base_url, ledger, keys=True) as url,
        sdk(url, key=KEYS["alice"]) as alice,
        sdk(url, key=KEYS["bob"]) as bob,
        sdk(url) as stranger,
        sdk(url, key=ADMIN_TOKEN) as admin,
    ):
        mine = alice.chat.completions.create(model=MODEL, messages=HELLO)
        theirs = bob.chat.completions.create(model=MODEL, messages=HELLO)

        assert generation(alice, mine.id)["id"] == mine.id
        with pytest.raises(openai.NotFoundError):
            generation(bob, mine.id)
        with pytest.raises(openai.NotFoundError):
            generation(alice, theirs.id)
        with pytest.raises(openai.AuthenticationError):
            generation(stranger, mine.id)  # no valid key: refused before any lookup
        assert generation(admin, mine.id)["id"] == mine.id and generation(admin, theirs.id)["id"] == theirs.id
        listed = admin_get(url, "/admin/requests", key="alice").json()["data"]

    assert [r["response_id"] for r in listed] == [mine.id]
    assert listed[0]["team"] == "t-alice"
    rows = {r.response_id: r for r in rows_of(ledger)}
    assert rows[mine.id].key_name == "alice" and rows[theirs.id].key_name == "bob"


# --- analytics and the request list ------------------------------------------------------------------------------


def test_analytics_sums_equal_the_sums_of_the_rows(fake_openai, ledger):
    with gateway(fake_openai.base_url, ledger) as url, sdk(url) as client:
        for i, (model, team) in enumerate(
            [
                ("gpt-4o-mini", "search"),
                ("gpt-4o", "search"),
                ("gpt-4o", "ads"),
                ("gpt-4o-mini", "ads"),
                ("gpt-4o-mini", "search"),
            ]
        ):
            client.chat.completions.create(
                model=f"openai/{model}", messages=HELLO, extra_body={"mlx:tags": {"team": team, "n": str(i)}}
            )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="no-such-model-anywhere", messages=HELLO, extra_body={"mlx:tags": {"team": "ads"}}
            )
        pages, cursor = [], None
        while True:
            page = admin_get(url, "/admin/requests", limit=4, **({"cursor": cursor} if cursor else {})).json()
            pages.append(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        by_model = admin_get(url, "/admin/analytics", group_by="model").json()
        by_team = admin_get(url, "/admin/analytics", group_by="tag:team", interval="day").json()
        errors = admin_get(url, "/admin/requests", status=404).json()["data"]
        ads = admin_get(url, "/admin/requests", tag="team:ads", model="gpt-4o-2024-08-06").json()["data"]

    listed = [r for page in pages for r in page]
    rows = rows_of(ledger)
    assert [len(p) for p in pages] == [4, 2] and {r["request_id"] for r in listed} == {r.request_id for r in rows}
    assert [r["created_at"] for r in listed] == sorted((r["created_at"] for r in listed), reverse=True)
    for answer in (by_model, by_team):
        cells = answer["data"]
        assert sum(c["requests"] for c in cells) == len(rows) == 6
        assert sum(c["errors"] for c in cells) == 1
        assert sum(c["cost_nano"] for c in cells) == sum(r.cost_nano for r in rows) > 0
        assert sum(c["prompt_tokens"] for c in cells) == sum(r.prompt_tokens for r in rows)
        assert sum(c["completion_tokens"] for c in cells) == sum(r.completion_tokens for r in rows)
        assert all(c["latency_ms"]["p50"] is not None for c in cells)
    model_cells = {c["group"]: c for c in by_model["data"]}
    assert model_cells["gpt-4o-mini-2024-07-18"]["requests"] == 3 and model_cells[None]["errors"] == 1
    assert {c["group"]: c["requests"] for c in by_team["data"]} == {"search": 3, "ads": 3}
    assert [r["status"] for r in errors] == [404]
    assert len(ads) == 1 and ads[0]["tags"]["team"] == "ads"


def test_admin_ledger_endpoints_refuse_bad_parameters_naming_them_and_need_the_admin_token(fake_openai, tmp_path):
    ledger = {"store": f"sqlite:///{tmp_path / 'ledger.db'}"}
    with gateway(fake_openai.base_url, ledger) as url:
        bad = [
            ("/admin/analytics", {"group_by": "colour"}, "group_by"),
            ("/admin/analytics", {"interval": "week"}, "interval"),
            ("/admin/analytics", {"from": "yesterday"}, "from"),
            ("/admin/analytics", {"from": "2025-06-02T00:00:00Z", "to": "2025-06-01T00:00:00Z"}, "to"),
            ("/admin/analytics", {"from": "2020-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"}, "from"),
            ("/admin/analytics", {"groupby": "model"}, "groupby"),
            ("/admin/requests", {"limit": "0"}, "limit"),
            ("/admin/requests", {"limit": "many"}, "limit"),
            ("/admin/requests", {"status": "ok"}, "status"),
            ("/admin/requests", {"tag": "team"}, "tag"),
            ("/admin/requests", {"cursor": "not-a-cursor"}, "cursor"),
        ]
        answers = [(admin_get(url, path, **params), param) for path, params, param in bad]
        unauthorized = admin_get(url, "/admin/requests", token="wrong")
        fine = admin_get(url, "/admin/analytics", **{"from": "2025-06-01T00:00:00", "to": "2025-06-02T00:00:00+02:00"})
    for response, param in answers:
        assert response.status_code == 400, (param, response.text)
        assert response.json()["error"]["param"] == param
    assert unauthorized.status_code == 401
    assert fine.status_code == 200 and fine.json()["from"] == "2025-06-01T00:00:00+00:00"
    assert fine.json()["to"] == "2025-06-01T22:00:00+00:00" and fine.json()["data"] == []


def test_without_a_ledger_section_nothing_is_written_and_the_lookups_say_it_is_off(
    fake_openai, gateway_url, client, tmp_path
):
    assert mux.parse_config(gateway_config(fake_openai.base_url)).ledger is None
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        app = mux.build_app(mux.parse_config(gateway_config(fake_openai.base_url)))
        assert app.resources.ledger is None
        with serve(app) as url, sdk(url) as local:
            local.chat.completions.create(model=MODEL, messages=HELLO)
            with pytest.raises(openai.NotFoundError) as off:
                generation(local, "chatcmpl-x")
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []
    assert "ledger" in off.value.message


# --- graceful shutdown -------------------------------------------------------------------------------------------


def test_sigterm_with_requests_in_flight_and_rows_queued_loses_no_row(fake_openai, ledger, tmp_path):
    port = free_port()
    config = tmp_path / "mux.yaml"
    section = {**ledger, "flush_ms": 60_000, "batch_rows": 10_000}  # nothing is written before shutdown
    config.write_text(
        json.dumps(
            {
                "providers": [
                    {
                        "name": "openai",
                        "type": "openai",
                        "base_url": fake_openai.base_url,
                        "api_key": fake_openai.api_key,
                        "models": ["gpt-4o-mini"],
                    }
                ],
                "server": {"port": port},
                "ledger": section,
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    failures: list[BaseException] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.05)
        with sdk(url) as client:
            for _ in range(5):
                seen.append(
                    client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO).headers[
                        "x-mux-request-id"
                    ]
                )
        assert count_of(ledger) == 0  # five rows answered, all still queued

        before = len(fake_openai.chat_requests)
        fake_openai.script(*[Reply(stall_s=0.6) for _ in range(20)])

        def slow_request() -> None:
            try:
                with sdk(url) as client:
                    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
                    seen.append(raw.headers["x-mux-request-id"])
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                failures.append(exc)

        threads = [threading.Thread(target=slow_request) for _ in range(20)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while len(fake_openai.chat_requests) < before + 20:  # all 20 are upstream, in flight
            assert time.monotonic() < deadline, "the requests did not reach the upstream"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=10)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: the process ends by SIGTERM
        assert process.wait(timeout=15) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert failures == []
    rows = rows_of(ledger)
    assert len(seen) == 25 and sorted(r.request_id for r in rows) == sorted(seen)
    assert all(r.status == 200 and r.cost_nano == nano_usd(r.cost_usd) > 0 for r in rows)
