"""Shared by the budget and rate-limit tests: gateway configs over the fake OpenAI, a stand-in for the AuthLayer
(``KeyAs``: the key record named by a test header), the worst case of a request as the BudgetLayer reckons it,
a recording logger, Redis prefixes, and gateway processes (``python app.py``).

Redis (127.0.0.1:6379) must answer: tests that use it fail without it, never skip. In-process tests use
database 11, gateway processes database 12, each test under a key prefix of its own that it deletes after.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgspec
import openai
from redis.asyncio import Redis

import mux
from mux.catalog.models import BUILTIN
from mux.config import ProviderConfig
from mux.context import context_of
from mux.keys.model import KeyRecord
from mux.money.estimate import prompt_tokens, target_cost
from mux.wire.openai import ChatRequest

from .conftest import gateway_config
from .servers import free_port, serve
from .test_app_entry import ROOT, env, wait_healthy

REDIS = "redis://127.0.0.1:6379"
INPROCESS_DB = 11
PROCESS_DB = 12
HI = [{"role": "user", "content": "hi"}]
OPENAI = ProviderConfig(name="openai", type="openai")


def worst_nano(model: str = "gpt-4o-mini", messages: list | None = None, **fields: Any) -> int:
    """The worst case (nano-USD) the BudgetLayer reserves for a one-target request to ``openai/<model>``."""
    request = msgspec.convert({"model": model, "messages": messages or HI, **fields}, ChatRequest)
    return target_cost(model, BUILTIN.info(OPENAI, model), prompt_tokens(request), request).nano


def usd(nano: int) -> float:
    return nano / 1e9


def config(fake_base_url: str, **extra: Any) -> mux.Config:
    """The conftest providers plus ``extra`` top-level keys (budgets, rate_limits, state, routes, ...)."""
    return mux.parse_config({**gateway_config(fake_base_url), **extra})


def redis_state(db: int = INPROCESS_DB) -> tuple[str, str]:
    """A Redis state URL and a fresh key prefix for one test."""
    return f"{REDIS}/{db}", f"mux-test-budget:{uuid.uuid4().hex}:"


def wipe(db: int, prefix: str) -> None:
    """Delete the keys under ``prefix`` (and only those) in Redis database ``db``."""

    async def run() -> None:
        client = Redis.from_url(f"{REDIS}/{db}")
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(run())


class KeyAs:
    """Test stand-in for the AuthLayer: ``x-test-key: <name>`` puts ``keys[name]`` in ``ctx.key``."""

    reads: frozenset[str] = frozenset()
    writes = frozenset({"key"})

    def __init__(self, app: Any, *, keys: dict[str, KeyRecord]) -> None:
        self.app = app
        self.keys = keys

    def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-test-key":
                    context_of(scope).key = self.keys[value.decode()]
        return self.app(scope, receive, send)


def key(name: str, **fields: Any) -> KeyRecord:
    return KeyRecord(name=name, key_hash="0" * 64, created_at=0.0, **fields)


def with_keys(keys: dict[str, KeyRecord]) -> Any:
    """A ``layers`` function for ``mux.build_app``: the default stack with ``KeyAs`` just inside the AuthLayer
    (which, with no key in its store, lets every request pass), or after TraceLayer when there is none."""
    from mux.layers.auth import AuthLayer

    def layers(config: mux.Config, resources: Any, **options: Any) -> list:
        chosen = mux.stack(config, resources, **options)
        at = next((i + 1 for i, (cls, _) in enumerate(chosen) if cls is AuthLayer), 2)
        return [*chosen[:at], (KeyAs, {"keys": keys}), *chosen[at:]]

    return layers


class Recorder:
    """A structlog-like logger that keeps ``(level, event, fields)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def _log(self, level: str):
        def log(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return log

    def __getattr__(self, level: str) -> Any:
        return self._log(level)

    def named(self, event: str) -> list[tuple[str, str, dict]]:
        return [e for e in self.events if e[1] == event]


@contextmanager
def gateway(cfg: mux.Config, **options: Any) -> Iterator[tuple[str, openai.OpenAI, mux.Gateway]]:
    """Serve ``mux.build_app(cfg, **options)`` on loopback; yield its URL, an SDK client (no retries) and the app."""
    app = mux.build_app(cfg, **options)
    with serve(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=20)
        try:
            yield url, client, app
        finally:
            client.close()


def chat(client: openai.OpenAI, *, model: str = "openai/gpt-4o-mini", headers: dict | None = None, **fields: Any):
    """One chat request; answer the raw response (status 200), or the ``APIStatusError`` raised."""
    try:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=fields.pop("messages", HI), extra_headers=headers, **fields
        )
    except openai.APIStatusError as error:
        return error


def status_of(answer: Any) -> int:
    return answer.status_code if isinstance(answer, openai.APIStatusError) else answer.http_response.status_code


def headers_of(answer: Any) -> httpx.Headers:
    return answer.response.headers if isinstance(answer, openai.APIStatusError) else answer.headers


# ---- gateway processes ----------------------------------------------------------------------------------


class Process:
    """``python app.py --config <file> --port <free>`` (more options in ``args``), started; ``stop()``/``kill()``."""

    def __init__(self, config_file: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--config", config_file, "--port", str(self.port), *args],
            cwd=ROOT,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def ready(self) -> Process:
        wait_healthy(self.url, self.process)
        return self

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key="k",
            max_retries=0,
            timeout=20,
            http_client=httpx.Client(limits=httpx.Limits(max_connections=100)),
        )

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no shutdown, no settle
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def wait_until(check: Any, seconds: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(every)
