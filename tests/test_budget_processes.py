"""Budgets and rate limits across processes, through ``python app.py`` and the openai SDK: two uvicorn workers
on one SQLite file, two gateway processes on one Redis, and a worker killed with SIGKILL while it holds
reservations. The fake OpenAI counts what reaches the provider."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from mux.money.units import to_nano

from .budget_helpers import HI, PROCESS_DB, Process, redis_state, status_of, usd, wait_until, wipe, worst_nano
from .conftest import FAKE_OPENAI_KEY, MODELS
from .fakes.openai_upstream import Reply
from .test_app_entry import ROOT, env

MAX = 50
W = worst_nano(max_tokens=MAX)


def write(tmp_path, name: str, fake_base_url: str, **extra) -> str:
    """A config file (JSON is YAML) with the fake as provider ``openai``."""
    provider = {
        "name": "openai",
        "type": "openai",
        "base_url": fake_base_url,
        "api_key": FAKE_OPENAI_KEY,
        "models": MODELS,
        **extra.pop("provider", {}),
    }
    path = tmp_path / name
    path.write_text(json.dumps({"providers": [provider], **extra}))
    return str(path)


def burst(clients: list[openai.OpenAI], n: int = 50, **fields) -> list:
    """``n`` requests at once from ``n`` threads, spread over ``clients``; answer the raw answers or errors."""

    def one(i: int):
        try:
            return clients[i % len(clients)].chat.completions.with_raw_response.create(
                model="openai/gpt-4o-mini", messages=HI, max_tokens=MAX, **fields
            )
        except openai.APIStatusError as error:
            return error

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def cut_off(client: openai.OpenAI) -> None:
    """One request that hangs at the provider until its gateway dies."""
    try:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HI, max_tokens=MAX, user="u")
    except openai.APIConnectionError:
        pass


def request_id(answer) -> str:
    headers = answer.response.headers if isinstance(answer, openai.APIStatusError) else answer.headers
    return headers["x-mux-request-id"]


def test_two_workers_on_one_sqlite_file_let_at_most_ten_of_fifty_concurrent_requests_through(tmp_path, fake_openai):
    cfg = write(
        tmp_path,
        "mux.yaml",
        fake_openai.base_url,
        state=f"sqlite:///{tmp_path}/state.db",
        budgets=[{"name": "per-user", "scope": {"end_user": "*"}, "usd": usd(W * 10 + W // 2), "period": "day"}],
    )
    gateway = Process(cfg, "--workers", "2")
    try:
        client = gateway.ready().client()
        # Which worker accepts a connection is the kernel's choice: a burst answered by one worker alone proves
        # nothing about sharing, so a fresh end user (a fresh budget) bursts again, three times at most.
        for user in ("user_7", "user_8", "user_9"):
            fake_openai.reset()
            fake_openai.script(*[Reply(stall_s=1.5) for _ in range(50)])
            answers = burst([client], user=user)
            statuses = [status_of(a) for a in answers]
            assert statuses.count(200) == 10 and statuses.count(402) == 40
            assert len(fake_openai.chat_requests) == 10
            if len({request_id(a)[4:12] for a in answers}) == 2:  # both workers answered
                break
        else:
            raise AssertionError("one worker answered every burst: the kernel never spread the connections")
    finally:
        gateway.stop()


def test_two_gateways_on_one_redis_share_a_tag_budget_and_a_rate_limit(tmp_path, fake_openai):
    state, prefix = redis_state(PROCESS_DB)
    cfg = write(
        tmp_path,
        "mux.yaml",
        fake_openai.base_url,
        state=state,
        state_prefix=prefix,
        budgets=[
            {"name": "acme", "scope": {"tag": {"tenant": "acme"}}, "usd": usd(W * 10 + W // 2), "period": "month"}
        ],
        rate_limits=[{"name": "users", "scope": {"end_user": "*"}, "rpm": 5}],
    )
    replicas = [Process(cfg), Process(cfg)]
    try:
        clients = [r.ready().client() for r in replicas]
        fake_openai.script(*[Reply(stall_s=1.5) for _ in range(50)])
        answers = burst(clients, extra_body={"mlx:tags": {"tenant": "acme"}})
        statuses = [status_of(a) for a in answers]
        assert statuses.count(200) == 10 and statuses.count(402) == 40
        assert len(fake_openai.chat_requests) == 10
        fake_openai.reset()  # no stall left for the requests below

        limited = [status_of(burst([clients[i % 2]], n=1, user="rl-user")[0]) for i in range(12)]
        assert limited.count(200) == 5 and limited.count(429) == 7  # 5 a minute across both, not 10
    finally:
        for r in replicas:
            r.stop()
        wipe(PROCESS_DB, prefix)


def test_a_killed_worker_holds_its_reservations_until_they_expire_and_no_spend_counts_twice(tmp_path, fake_openai):
    cap = W * 5 // 2  # two worst cases and what the first request really cost fit; a third worst case does not
    cfg = write(
        tmp_path,
        "mux.yaml",
        fake_openai.base_url,
        provider={"timeout_s": 3},
        health={"backoff_max_ms": 0},
        state=f"sqlite:///{tmp_path}/state.db",
        budgets=[{"name": "per-user", "scope": {"end_user": "*"}, "usd": usd(cap), "period": "day"}],
    )
    ttl = 3 + 0 + 2  # the attempt's timeout, no backoff, the slack (mux.layers.budget.reservation_ttl)
    doomed, survivor = Process(cfg), Process(cfg)
    try:
        a, b = doomed.ready().client(), survivor.ready().client()
        first = a.chat.completions.with_raw_response.create(
            model="openai/gpt-4o-mini", messages=HI, max_tokens=MAX, user="u"
        )
        spent = to_nano(float(first.headers["x-mux-cost-usd"]))
        fake_openai.script(Reply(stall_s=30), Reply(stall_s=30))
        hanging = [threading.Thread(target=cut_off, args=(a,), daemon=True) for _ in range(2)]
        for t in hanging:
            t.start()
        wait_until(lambda: len(fake_openai.chat_requests) == 3)
        reserved_at = time.monotonic()
        doomed.kill()

        held = burst([b], n=1, user="u")[0]
        assert status_of(held) == 402 and time.monotonic() < reserved_at + ttl  # still held by the dead worker
        assert to_nano(held.response.json()["budget"]["spend_usd"]) == spent

        time.sleep(max(0.0, reserved_at + ttl + 0.2 - time.monotonic()))
        after = b.chat.completions.with_raw_response.create(
            model="openai/gpt-4o-mini", messages=HI, max_tokens=MAX, user="u"
        )
        now = to_nano(float(after.headers["x-mux-cost-usd"]))
        assert to_nano(float(after.headers["x-mux-budget-remaining-usd"])) == cap - spent - now
    finally:
        doomed.stop()
        survivor.stop()
    assert len(fake_openai.chat_requests) == 4


def test_memory_state_is_refused_with_several_workers_saying_why(tmp_path):
    cfg = tmp_path / "mux.yaml"
    cfg.write_text("providers: [{name: openai, type: openai, api_key: k}]\nstate: memory\n")
    result = subprocess.run(
        [sys.executable, "app.py", "--config", str(cfg), "--workers", "2"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert (
        b"state: 'memory' keeps keys (and budgets and rate limits) in one process's memory, so each of the 2 "
        b"workers would have its own" in result.stderr
    )
