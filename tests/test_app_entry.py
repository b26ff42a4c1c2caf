"""``python app.py``: starts from environment keys or a YAML file; a bad config exits non-zero first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return {**base, **extra}


def wait_healthy(url: str, process: subprocess.Popen) -> httpx.Response:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        try:
            return httpx.get(f"{url}/healthz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start")


def test_zero_config_gateway_starts_from_environment_keys():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env(OPENAI_API_KEY="sk-test-key"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_healthy(url, process).json() == {"status": "ok"}
        response = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "claude-x", "messages": [{"role": "user", "content": "x"}]}
        )
        assert response.status_code == 404 or response.status_code == 400
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    assert b'"event":"request"' in out and b"sk-test-key" not in out


def test_yaml_config_gateway_starts(tmp_path):
    port = free_port()
    config = tmp_path / "mux.yaml"
    config.write_text(
        f"providers:\n  - {{name: openai, type: openai, api_key: k, models: [gpt-4o-mini]}}\nserver: {{port: {port}}}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "app.py", "--config", str(config)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "openai/gpt-4o-mini"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_bad_config_exits_non_zero_naming_the_key_before_serving(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("providers:\n  - {name: openai, type: openai, timeout: 5}\n")
    result = subprocess.run(
        [sys.executable, "app.py", "--config", str(config)], cwd=ROOT, env=env(), capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert b"providers[0]: Object contains unknown field `timeout`" in result.stderr


def test_sighup_reloads_the_config_file_and_a_bad_file_keeps_the_old_config(tmp_path):
    import signal

    port = free_port()
    config = tmp_path / "mux.yaml"
    base = (
        f"providers:\n  - {{name: openai, type: openai, api_key: k, models: [gpt-4o-mini]}}\nserver: {{port: {port}}}\n"
    )
    config.write_text(base + "routes:\n  first: {targets: [{model: openai/gpt-4o-mini}]}\n")
    process = subprocess.Popen(
        [sys.executable, "app.py", "--config", str(config)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    def served_models() -> set[str]:
        return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}

    def wait_until(predicate) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return False

    try:
        wait_healthy(url, process)
        assert "@first" in served_models()
        config.write_text(base + "routes:\n  second: {targets: [{model: openai/gpt-4o-mini}]}\n")
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "@second" in served_models())
        assert "@first" not in served_models()
        config.write_text(base + "routes:\n  broken: {targets: [{model: '@broken'}]}\n")  # a cycle
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert process.poll() is None and "@second" in served_models()
    finally:
        process.terminate()
        process.wait(timeout=10)
