"""Reload reaches every worker: processes sharing one state file serve each other's reloads and rollbacks.

Unit level: two ``LiveRouting`` sharing a SQLite file stand for two workers. End to end: ``python app.py
--workers 2`` against the strict fake OpenAI upstream, told apart by the per-process prefix of their request
ids."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from mux.config import ConfigError, parse_config
from mux.routing.live import LiveRouting
from mux.routing.versions import SQLiteVersions

from .conftest import FAKE_OPENAI_KEY
from .servers import free_port
from .test_app_entry import ROOT, env, wait_healthy

PROVIDERS = [
    {"name": "a", "type": "openai", "base_url": "http://a.test/v1", "api_key": "k"},
    {"name": "b", "type": "openai", "base_url": "http://b.test/v1", "api_key": "k"},
]
HELLO = [{"role": "user", "content": "hello"}]
ADMIN = "admin-token-for-tests"


def routed(model: str) -> dict:
    return {"providers": PROVIDERS, "routes": {"p": {"targets": [{"model": model}]}}}


class Source:
    """A config source that tests edit, as an operator edits the file."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def __call__(self):
        return parse_config(self.data)


def served_model(live: LiveRouting) -> str:
    return live.routes["p"].config.targets[0].model


def two_workers(tmp_path, source: Source) -> tuple[LiveRouting, LiveRouting]:
    path = str(tmp_path / "state.sqlite")
    return (
        LiveRouting(source(), versions=SQLiteVersions(path), source=source),
        LiveRouting(source(), versions=SQLiteVersions(path), source=source),
    )


def test_a_reload_in_one_worker_is_served_by_the_other_after_its_next_sync(tmp_path):
    source = Source(routed("a/m"))
    first, second = two_workers(tmp_path, source)
    assert first.shared and second.shared
    assert second.sync() is False  # nothing changed: nothing re-read
    source.data = routed("b/m")
    assert first.reload() == {"p": 2}
    assert served_model(second) == "a/m"
    assert second.sync() is True
    assert served_model(second) == "b/m" and second.routes["p"].version == 2
    assert first.sync() is False  # its own reload is not applied twice


def test_a_rollback_in_one_worker_is_served_by_the_other_and_a_reload_ends_it(tmp_path):
    source = Source(routed("a/m"))
    first, second = two_workers(tmp_path, source)
    source.data = routed("b/m")
    first.reload()
    second.sync()
    assert first.rollback("p", 1).version == 1
    assert second.sync() and served_model(second) == "a/m" and second.routes["p"].version == 1
    late = LiveRouting(source(), versions=SQLiteVersions(str(tmp_path / "state.sqlite")), source=source)
    assert served_model(late) == "a/m"  # a worker started later serves the rollback too
    second.reload()
    assert first.sync() and served_model(first) == "b/m" and first.routes["p"].version == 2


def test_a_rollback_alone_does_not_re_read_the_source(tmp_path):
    source = Source(routed("a/m"))
    first, second = two_workers(tmp_path, source)
    source.data = routed("b/m")
    first.reload()
    second.sync()
    source.data = routed("nowhere")  # an edit nobody reloaded yet
    first.rollback("p", 1)
    assert second.sync() and served_model(second) == "a/m"
    assert served_model(first) == "a/m"
    second.rollback("p", 2)
    assert first.sync() and served_model(first) == "b/m"


def test_a_change_the_other_worker_cannot_read_is_reported_once_and_the_old_config_keeps_serving(tmp_path):
    source = Source(routed("a/m"))
    first, second = two_workers(tmp_path, source)
    source.data = routed("b/m")
    first.reload()
    source.data = {**routed("a/m"), "routes": {"x": {"targets": [{"model": "@x"}]}}}  # a cycle, written meanwhile
    with pytest.raises(ConfigError, match="cycle"):
        second.sync()
    assert served_model(second) == "a/m"
    assert second.sync() is False


def test_sighup_to_the_supervisor_records_a_good_file_and_a_bad_file_changes_nothing(tmp_path):
    import app

    state, config = str(tmp_path / "state.sqlite"), tmp_path / "mux.yaml"
    config.write_text("providers: [{name: a, type: openai, api_key: k}]\nroutes: {p: {targets: [{model: a/m}]}}\n")
    app.reload_workers(str(config), state)
    assert SQLiteVersions(state).served().generation == 1
    config.write_text("routes: {p: {targets: [{model: '@p'}]}}\n")  # a cycle
    app.reload_workers(str(config), state)
    assert SQLiteVersions(state).served().generation == 1


def answers(client: openai.OpenAI, *, least: int = 6, seconds: float = 20) -> dict[str, set[str]]:
    """Send routed requests (a new connection each) until both workers answered and at least ``least`` answers
    came; answer the config versions each worker (told by its request-id prefix) served."""
    seen: dict[str, set[str]] = {}
    count, deadline = 0, time.monotonic() + seconds
    while (len(seen) < 2 or count < least) and time.monotonic() < deadline:
        raw = client.chat.completions.with_raw_response.create(model="@production", messages=HELLO)
        worker = raw.headers["x-mux-request-id"][4:12]  # "req_" and the process's random prefix
        seen.setdefault(worker, set()).add(raw.headers["x-mux-config-version"])
        count += 1
    assert len(seen) == 2, f"only one worker answered {count} requests"
    return seen


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_two_workers_both_serve_a_reload_a_rollback_and_a_sighup_within_a_second(tmp_path, fake_openai):
    port = free_port()
    config = tmp_path / "mux.yaml"

    def write(*models: str) -> None:
        targets = ", ".join(f"{{model: openai/{m}}}" for m in models)
        config.write_text(
            f"providers:\n  - {{name: openai, type: openai, base_url: '{fake_openai.base_url}', "
            f"api_key: {FAKE_OPENAI_KEY}, models: [gpt-4o-mini, gpt-4o]}}\n"
            f"server: {{admin_token: {ADMIN}}}\n"  # and no state_path: app.py gives the workers a temporary one
            f"state: 'sqlite:///{tmp_path / 'keys.db'}'\n"  # the key store an admin token opens, not the default file
            f"routes:\n  production: {{targets: [{targets}]}}\n"
        )

    def admin(path: str, **kwargs) -> httpx.Response:
        return httpx.post(url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10, **kwargs)

    def one_second_after(started: float) -> None:
        time.sleep(max(0.0, started + 1.0 - time.monotonic()))

    write("gpt-4o-mini")
    log = (tmp_path / "out.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "app.py", "--config", str(config), "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env(),
        stdout=log,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(
        base_url=url + "/v1",
        api_key="k",
        max_retries=0,
        timeout=10,
        http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)),
    )
    try:
        wait_healthy(url, process)
        assert set().union(*answers(client).values()) == {"1"}

        write("gpt-4o")
        started = time.monotonic()
        assert admin("/admin/reload").json()["routes"]["production"]["version"] == 2
        one_second_after(started)
        assert set().union(*answers(client).values()) == {"2"}

        started = time.monotonic()
        assert admin("/admin/routes/production/rollback", json={"version": 1}).status_code == 200
        one_second_after(started)
        assert set().union(*answers(client).values()) == {"1"}

        write("gpt-4o", "gpt-4o-mini")
        started = time.monotonic()
        process.send_signal(signal.SIGHUP)  # to the supervisor
        one_second_after(started)
        assert set().union(*answers(client).values()) == {"3"}
        assert {r.body["model"] for r in fake_openai.chat_requests[-6:]} == {"gpt-4o"}
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)
        log.close()
    assert b"sk-fake" not in (tmp_path / "out.log").read_bytes()
