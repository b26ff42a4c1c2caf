"""The ``keys:``, ``state:`` and ``server.key_secret`` config, and how the gateway wires them: the key store is
opened only when something needs it, holds exactly the config's keys after each start, and AuthLayer sits
between TraceLayer and TagsLayer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mux
from mux.gateway import check_stack
from mux.keys.hashing import hash_key
from mux.keys.spec import KeySpec, record_from_spec
from mux.layers.auth import AuthLayer
from mux.layers.tags import TagsLayer
from mux.layers.trace import TraceLayer

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = {"providers": [{"name": "openai", "type": "openai", "api_key": "k"}]}

ISSUE_EXAMPLE = """
keys:
  - {name: acme, key: "${ACME_KEY}", team: search, budget_usd: 50, budget_period: month, rpm: 600, tpm: 200000,
     models: ["openai/gpt-4o-mini", "@production"], expires_at: "2027-01-01T00:00:00Z"}
state: redis://127.0.0.1:6379/0
server: {admin_token: "${MUX_ADMIN_TOKEN}", key_secret: "${MUX_KEY_SECRET}"}
"""


def test_the_documented_keys_config_parses():
    env = {"ACME_KEY": "acme-0123456789abcdef", "MUX_ADMIN_TOKEN": "tok-9f8e7d", "MUX_KEY_SECRET": "sec"}
    config = mux.parse_config(yaml.safe_load(ISSUE_EXAMPLE), env)
    (acme,) = config.keys
    assert (acme.name, acme.team, acme.budget_usd, acme.budget_period, acme.rpm, acme.tpm) == (
        "acme",
        "search",
        50,
        "month",
        600,
        200000,
    )
    assert acme.models == ["openai/gpt-4o-mini", "@production"] and acme.expires_at.year == 2027
    assert config.state == "redis://127.0.0.1:6379/0" and config.server.key_secret == "sec"
    assert mux.parse_config({}).state == "sqlite:///mux-state.db"
    assert "acme-0123456789abcdef" not in repr(config) and "tok-9f8e7d" not in repr(config.server)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"keys": [{"name": "a"}]}, "keys[0]: give exactly one of 'key' and 'key_sha256'"),
        ({"keys": [{"name": "a", "key": "k" * 16}, {"name": "a", "key": "j" * 16}]}, "keys[1].name: key name 'a'"),
        ({"keys": [{"name": "a", "key": "k" * 16}, {"name": "b", "key": "k" * 16}]}, "keys[1]: the same key"),
        ({"keys": [{"name": "a", "key": "short"}]}, "keys[0].key: Expected `str` of length >= 16"),
        ({"keys": [{"name": "a", "key": "k" * 16, "rmp": 5}]}, "keys[0]: Object contains unknown field `rmp`"),
        ({"keys": [{"name": "a", "key": "k" * 16, "budget_period": "year"}]}, "keys[0].budget_period"),
        ({"state": "postgres://u:hunter2@db/x"}, "state: unsupported state 'postgres://…'"),
        ({"state": "sqlite:///"}, "state: state 'sqlite:///' names no file"),
        ({"state": "redis://:hunter2@localhost/zero"}, "state: state redis://… has database 'zero'"),
        ({"server": {"key_secrets": "x"}}, "server: Object contains unknown field `key_secrets`"),
        ({"state": "memory", "server": {"workers": 2}}, "state: 'memory' keeps keys"),
    ],
)
def test_bad_key_and_state_config_is_refused_naming_the_key(data, message):
    with pytest.raises(mux.ConfigError) as info:
        mux.parse_config(data)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value) and "k" * 16 not in str(info.value)


def test_memory_state_with_several_workers_is_refused_at_start_saying_why(tmp_path):
    config = tmp_path / "mux.yaml"
    config.write_text("providers: [{name: openai, type: openai, api_key: k}]\nstate: memory\n")
    result = subprocess.run(
        [sys.executable, "app.py", "--config", str(config), "--workers", "2"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert b"state: 'memory'" in result.stderr and b"each of the 2 workers would have its own" in result.stderr


def open_and_close(app: mux.Gateway) -> None:
    async def cycle() -> None:
        await app.resources.open()
        await app.resources.aclose()

    asyncio.run(cycle())


def test_a_plain_config_opens_no_state_store_and_creates_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = mux.build_app(mux.parse_config(PROVIDERS))
    open_and_close(app)
    assert app.resources.keys is None and list(tmp_path.iterdir()) == []
    assert AuthLayer not in [cls for cls, _ in mux.stack(mux.parse_config(PROVIDERS))]
    app = mux.build_app(mux.parse_config({**PROVIDERS, "server": {"admin_token": "t"}}))
    open_and_close(app)  # an admin token can make keys: the default state store, a SQLite file
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == ["mux-state.db"]


def test_auth_layer_sits_between_trace_and_tags_and_the_stack_checks():
    config = mux.parse_config({**PROVIDERS, "keys": [{"name": "a", "key": "k" * 16}], "state": "memory"})
    layers = [cls for cls, _ in mux.stack(config)]
    assert layers.index(TraceLayer) + 1 == layers.index(AuthLayer) == layers.index(TagsLayer) - 1
    check_stack(mux.stack(config))


def test_each_start_makes_the_store_hold_exactly_the_configs_keys_and_keeps_api_keys(tmp_path):
    state = f"sqlite:///{tmp_path / 'state.db'}"

    async def start(keys: list[dict]) -> mux.Gateway:
        app = mux.build_app(
            mux.parse_config({**PROVIDERS, "keys": keys, "state": state, "server": {"key_secret": "s"}})
        )
        await app.resources.open()
        return app

    async def scenario() -> None:
        app = await start([{"name": "a", "key": "a" * 16}, {"name": "b", "key": "b" * 16}])
        await app.resources.keys.store.put(record_from_spec(KeySpec(name="api"), secret="s", now=0)[0])
        await app.resources.aclose()
        app = await start([{"name": "a", "key": "c" * 16}])
        store = app.resources.keys.store
        assert [r.name for r in await store.list()] == ["a", "api"]
        record = await store.get("a")
        assert record.key_hash == hash_key("c" * 16, "s") and record.source == "config"
        await app.resources.aclose()

    asyncio.run(scenario())
