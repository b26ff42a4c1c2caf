"""Shared fixtures: a strict fake OpenAI upstream, a mux gateway in front of it, and an openai SDK client.

The fake and the gateway are started once per session (uvicorn on loopback, in threads); each test gets the
fake with its records and script reset. Providers of the gateway:

- ``openai``: the fake with generous timeouts;
- ``tight``: the same fake with a 1 s total limit and sub-second first-byte and idle timeouts;
- ``badkey``: the same fake with a key it refuses, for the upstream-401 path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest

import mux
import mux.runtime
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve

# The gateways under test log one JSON line per request; keep them out of the test output.
mux.configure_logging(stream=open(os.devnull, "wb"))

# A standalone gateway tunes the process's collector when it starts (mux.runtime): frozen objects are never
# collected, so in this one long test process each test's gateway would stay in memory. test_runtime.py
# tests the tuning itself, in a process of its own.
mux.runtime.tune_gc = lambda *args, **kwargs: None

FAKE_OPENAI_KEY = "sk-fake-upstream-0123456789abcdef"
CLIENT_KEY = "sk-client-key-never-forwarded"
WRONG_PROVIDER_KEY = "sk-revoked-provider-key-9876543210"
MODELS = ["gpt-4o-mini", "gpt-4o"]
TIGHT_TOTAL_S = 1.0
TIGHT_FIRST_BYTE_S = 0.3
TIGHT_IDLE_S = 0.3


def gateway_config(fake_base_url: str) -> dict:
    return {
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "base_url": fake_base_url,
                "api_key": FAKE_OPENAI_KEY,
                "models": MODELS,
                "timeout_s": 30,
            },
            {
                "name": "tight",
                "type": "openai",
                "base_url": fake_base_url,
                "api_key": FAKE_OPENAI_KEY,
                "models": [],
                "timeout_s": TIGHT_TOTAL_S,
                "first_byte_timeout_s": TIGHT_FIRST_BYTE_S,
                "idle_timeout_s": TIGHT_IDLE_S,
            },
            {
                "name": "badkey",
                "type": "openai",
                "base_url": fake_base_url,
                "api_key": WRONG_PROVIDER_KEY,
                "models": [],
            },
        ]
    }


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=FAKE_OPENAI_KEY)
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The session's fake OpenAI, with no records and no script."""
    fake_openai_server.reset()
    yield fake_openai_server
    fake_openai_server.reset()


@pytest.fixture(scope="session")
def gateway_app(fake_openai_server: FakeOpenAI) -> mux.Gateway:
    return mux.build_app(mux.parse_config(gateway_config(fake_openai_server.base_url)))


@pytest.fixture(scope="session")
def gateway_url(gateway_app: mux.Gateway) -> Iterator[str]:
    with serve(gateway_app) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_gateway_health(request: pytest.FixtureRequest) -> None:
    """Each test starts with no breaker or latency history: the shared gateway's health is process-wide by
    design, and one test's failures must not open a breaker for the next."""
    if "gateway_url" in request.fixturenames:
        request.getfixturevalue("gateway_app").routing.health.targets.clear()


@pytest.fixture(scope="session")
def client(gateway_url: str) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=gateway_url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)
    yield sdk
    sdk.close()
