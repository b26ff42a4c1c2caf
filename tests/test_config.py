"""Config: YAML with ${ENV} interpolation, unknown keys refused with their path, zero-config from env."""

from __future__ import annotations

import pytest

from mux.config import ConfigError, config_from_env, load_config, parse_config


def write(tmp_path, text: str) -> str:
    path = tmp_path / "mux.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_config_loads_with_env_interpolation_and_defaults(tmp_path):
    path = write(
        tmp_path,
        """
providers:
  - name: openai
    type: openai
    base_url: ${OPENAI_URL:-https://api.openai.com/v1}
    api_key: ${OPENAI_API_KEY}
    timeout_s: 60
    models: [gpt-4o-mini, gpt-4o]
server: {host: 0.0.0.0, port: 9000, max_body_mb: 2}
""",
    )
    config = load_config(path, {"OPENAI_API_KEY": "sk-test"})
    provider = config.providers[0]
    assert provider.api_key == "sk-test" and provider.base_url == "https://api.openai.com/v1"
    assert provider.timeout_s == 60 and provider.models == ["gpt-4o-mini", "gpt-4o"]
    assert config.server.port == 9000 and config.server.max_body_bytes == 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"providers": [{"name": "openai", "type": "openai", "timout_s": 3}]},
            "providers[0]: Object contains unknown field `timout_s`",
        ),
        ({"server": {"port": "eighty"}}, "server.port: Expected `int`, got `str`"),
        ({"server": {"port": 70000}}, "server.port: Expected `int` <= 65535"),
        ({"providers": [{"name": "x", "type": "nope"}]}, "providers[0].type: unknown provider type 'nope'"),
        ({"providers": [{"name": "a", "type": "openai"}, {"name": "a", "type": "openai"}]}, "providers[1].name"),
        ({"providers": [{"name": "a", "type": "openai", "base_url": "ftp://x"}]}, "providers[0].base_url"),
        ({"providers": [{"name": "a/b", "type": "openai"}]}, "providers[0].name"),
        (
            {"providers": [{"name": "a", "type": "openai", "api_key": "${MISSING_KEY}"}]},
            "providers[0].api_key: environment variable MISSING_KEY is not set",
        ),
        ({"provider": []}, "Object contains unknown field `provider`"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_config_names_the_key_path_and_the_problem(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data, {})
    assert message in str(info.value)


def test_unreadable_or_invalid_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "providers: [unclosed"))


def test_zero_config_enables_each_provider_whose_key_is_set_at_its_real_base_url():
    config = config_from_env({"OPENAI_API_KEY": "sk-1"})
    assert [(p.name, p.type, p.base_url, p.api_key) for p in config.providers] == [
        ("openai", "openai", "https://api.openai.com/v1", "sk-1")
    ]
    assert config_from_env({}).providers == []
    custom = config_from_env({"OPENAI_API_KEY": "sk-1", "OPENAI_BASE_URL": "http://127.0.0.1:1234/v1"})
    assert custom.providers[0].base_url == "http://127.0.0.1:1234/v1"


def test_provider_repr_never_shows_the_api_key():
    config = config_from_env({"OPENAI_API_KEY": "sk-secret-123"})
    assert "sk-secret-123" not in repr(config) and "sk-secret-123" not in repr(config.providers[0])


def test_the_ledger_is_off_unless_configured_and_its_section_refuses_unknown_keys_and_bad_stores():
    assert parse_config({}).ledger is None
    ledger = parse_config({"ledger": {}}).ledger
    assert ledger is not None and ledger.store == "sqlite:///mux.db" and ledger.store_bodies is False
    assert (ledger.batch_rows, ledger.flush_ms, ledger.max_queue) == (500, 5.0, 100_000)
    with pytest.raises(ConfigError, match="ledger: Object contains unknown field `store_body`"):
        parse_config({"ledger": {"store_body": True}})
    with pytest.raises(ConfigError, match="ledger: store must be sqlite:///FILE or postgresql://"):
        parse_config({"ledger": {"store": "mysql://db/ledger"}})
    with pytest.raises(ConfigError, match="ledger.batch_rows"):
        parse_config({"ledger": {"batch_rows": 0}})
    with pytest.raises(ConfigError, match="ledger.schema"):
        parse_config({"ledger": {"store": "postgresql://db/x", "schema": "a; DROP TABLE x"}})


def test_ledger_repr_hides_the_store_password_and_names_it_as_a_secret():
    ledger = parse_config({"ledger": {"store": "postgresql://mux:s3cr%40t@db:5432/mux"}}).ledger
    assert "s3cr" not in repr(ledger) and "postgresql://mux:***@db:5432/mux" in repr(ledger)
    assert set(ledger.secrets) == {"s3cr%40t", "s3cr@t"}
