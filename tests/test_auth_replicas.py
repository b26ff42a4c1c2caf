"""A key made or revoked through one gateway is honoured by another within 1 s: two gateways in one process
sharing the real Redis (db 14, flushed first), and two gateway processes sharing one SQLite file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

import mux
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import free_port, serve

ADMIN = "admin-token-replicas-0123"
REDIS_URL = "redis://127.0.0.1:6379/14"
BOUND_S = 1.0
ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "hello"}]


def config(fake: FakeOpenAI, state: str) -> dict:
    return {
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "base_url": fake.base_url,
                "api_key": "sk-fake-upstream-0123456789abcdef",
                "models": ["gpt-4o-mini"],
            }
        ],
        "keys": [{"name": "cfg", "key": "config-key-0123456789abcdef"}],
        "state": state,
        "server": {"admin_token": ADMIN, "key_secret": "replica-secret"},
    }


def status(url: str, key: str) -> int:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "openai/gpt-4o-mini", "messages": HELLO},
        timeout=5,
    ).status_code


def until(url: str, key: str, wanted: int, started: float, limit_s: float = 3.0) -> float:
    """Poll until ``key`` gets ``wanted`` from ``url``; answer the seconds since ``started``."""
    while status(url, key) != wanted:
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"{url} still did not answer {wanted} after {limit_s} s")
        time.sleep(0.005)
    return time.monotonic() - started


def admin(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=5, **kwargs)


def made_on_a_then_revoked_on_a(a: str, b: str) -> tuple[float, float]:
    """Create a key through A, wait until B serves it, revoke it through A: answer how long B took to serve
    the new key and to refuse the revoked one."""
    started = time.monotonic()
    key = admin(a, "POST", "/admin/keys", json={"name": "roaming"}).json()["key"]
    assert status(a, key) == 200  # at once where it was made
    seen_after = until(b, key, 200, started)
    time.sleep(0.3)  # B serves it from its cache, past a revision read
    assert status(b, key) == 200
    started = time.monotonic()
    assert admin(a, "DELETE", "/admin/keys/roaming").status_code == 200
    assert status(a, key) == 401
    refused_after = until(b, key, 401, started)
    return seen_after, refused_after


def test_a_key_revoked_through_one_gateway_is_refused_by_another_within_1s_on_redis(fake_openai):
    redis.Redis.from_url(REDIS_URL).flushdb()
    a_app = mux.build_app(mux.parse_config(config(fake_openai, REDIS_URL)))
    b_app = mux.build_app(mux.parse_config(config(fake_openai, REDIS_URL)))
    with serve(a_app) as a, serve(b_app) as b:
        assert status(b, "config-key-0123456789abcdef") == 200
        seen_after, refused_after = made_on_a_then_revoked_on_a(a, b)
    assert seen_after < BOUND_S, f"B refused a new key for {seen_after:.3f} s"
    assert refused_after < BOUND_S, f"B accepted a revoked key for {refused_after:.3f} s"


def test_a_key_revoked_by_one_gateway_process_is_refused_by_another_on_the_same_sqlite_file_within_1s(
    fake_openai, tmp_path
):
    state = f"sqlite:///{tmp_path / 'state.db'}"
    port = free_port()
    yaml = tmp_path / "mux.yaml"
    yaml.write_text(mux_yaml(config(fake_openai, state), port))
    other = subprocess.Popen(
        [sys.executable, "app.py", "--config", str(yaml)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with serve(mux.build_app(mux.parse_config(config(fake_openai, state)))) as a:
            b = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                assert other.poll() is None, other.stderr.read()
                try:
                    if httpx.get(b + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the second gateway did not start"
                time.sleep(0.05)
            seen_after, refused_after = made_on_a_then_revoked_on_a(a, b)
    finally:
        other.terminate()
        other.wait(timeout=10)
    assert seen_after < BOUND_S, f"the other process refused a new key for {seen_after:.3f} s"
    assert refused_after < BOUND_S, f"the other process accepted a revoked key for {refused_after:.3f} s"


def mux_yaml(data: dict, port: int) -> str:
    import json

    data = {**data, "server": {**data["server"], "port": port}}
    return json.dumps(data)  # JSON is YAML
