"""The ``state:`` setting: memory, sqlite:///path, redis://host:port/db — anything else refused, no password shown."""

from __future__ import annotations

import pytest

from mux.stores.state_url import MemoryState, RedisState, SqliteState, parse_state_url


def test_memory() -> None:
    assert parse_state_url("memory") == MemoryState()


def test_sqlite_paths_relative_and_absolute() -> None:
    assert parse_state_url("sqlite:///mux-state.db") == SqliteState(path="mux-state.db")
    assert parse_state_url("sqlite:///data/mux.db") == SqliteState(path="data/mux.db")
    assert parse_state_url("sqlite:////var/lib/mux/state.db") == SqliteState(path="/var/lib/mux/state.db")


def test_redis_with_defaults_and_in_full() -> None:
    assert parse_state_url("redis://127.0.0.1:6379/0") == RedisState(host="127.0.0.1", port=6379, db=0)
    assert parse_state_url("redis://cache") == RedisState(host="cache", port=6379, db=0)
    assert parse_state_url("redis://cache:6380/") == RedisState(host="cache", port=6380, db=0)
    full = parse_state_url("rediss://mux:s%40cret@cache.internal:6390/3")
    assert full == RedisState(host="cache.internal", port=6390, db=3, username="mux", password="s@cret", tls=True)
    assert full.url() == "rediss://mux:s%40cret@cache.internal:6390/3"
    assert parse_state_url(full.url()) == full


def test_a_redis_password_is_not_in_the_repr() -> None:
    state = parse_state_url("redis://:hunter2@cache:6379/1")
    assert "hunter2" not in repr(state) and "hunter2" not in str(state) and "***" in repr(state)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "expected 'memory'"),
        ("Memory", "expected 'memory'"),
        ("postgresql://localhost/test", "unsupported state"),
        ("sqlite://host/mux.db", "names a host"),
        ("sqlite://mux.db", "names a host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///dir/", "names no file"),
        ("sqlite:///:memory:", "use 'memory'"),
        ("sqlite:///mux.db?mode=ro", "no query"),
        ("redis://", "names no host"),
        ("redis://cache:port/0", "invalid host or port"),
        ("redis://cache:6379/zero", "database is a number"),
        ("redis://cache:6379/0?timeout=1", "no query"),
    ],
)
def test_anything_else_is_refused_saying_what_is_accepted(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_state_url(text)


@pytest.mark.parametrize(
    "text",
    [
        "redis://:hunter2@cache:port/0",
        "redis://u:hunter2@cache:1/x",
        "redis://:hunter2@cache:1/0?a=b",
        "mysql://root:hunter2@db/x",
    ],
)
def test_a_refusal_never_repeats_the_password(text: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_state_url(text)
    assert "hunter2" not in str(e.value)
