"""Key stores, the same contract on every backend (memory, SQLite, the real Redis): create, find by the
current and the previous hash, replace, list, delete, a revision that grows with each change, no hash
shared between names, and the start-up load of the config's keys."""

from __future__ import annotations

import msgspec
import pytest

from mux.keys.hashing import hash_key
from mux.keys.model import KeyRecord, rotated
from mux.keys.spec import KeySpec, load_config_keys
from mux.stores.keys import KeyHashInUse, KeyStoreUnavailable, key_store
from mux.stores.keys.memory import MemoryKeyStore
from mux.stores.keys.redis import RedisKeyStore
from mux.stores.keys.sqlite import SQLiteKeyStore
from tests.keys_stores import BACKENDS, opened
from tests.servers import run

H = {n: hash_key(f"mux-test-key-{n}-0123456789") for n in "abcdef"}


def record(name: str, h: str, **fields) -> KeyRecord:
    return KeyRecord(name=name, key_hash=h, created_at=1000.0, **fields)


FULL = record(
    "acme",
    H["a"],
    team="search",
    metadata={"owner": "ops", "tier": "gold"},
    models=["openai/gpt-4o-mini", "@production"],
    expires_at=1_798_761_600.0,
    disabled=True,
    budget_usd=50.0,
    budget_period="month",
    rpm=600,
    tpm=200_000,
    hint="mux-…abcd",
    source="config",
)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def test_put_then_find_by_hash_and_by_name_round_trips_every_field(backend, tmp_path):
    async def scenario():
        async with opened(backend, tmp_path) as store:
            assert await store.revision() == 0 and await store.count() == 0
            revision = await store.put(FULL)
            assert revision == await store.revision() > 0
            assert await store.by_hash(H["a"]) == FULL
            assert await store.get("acme") == FULL
            assert await store.by_hash(H["b"]) is None and await store.get("nobody") is None
            assert await store.list() == [FULL] and await store.count() == 1

    run(scenario())


def test_list_is_by_name_and_delete_revokes(backend, tmp_path):
    async def scenario():
        async with opened(backend, tmp_path) as store:
            for name, h in (("zed", H["a"]), ("alpha", H["b"]), ("mid", H["c"])):
                await store.put(record(name, h))
            assert [r.name for r in await store.list()] == ["alpha", "mid", "zed"]
            before = await store.revision()
            assert await store.delete("mid") is True
            assert await store.revision() > before
            assert await store.by_hash(H["c"]) is None and await store.get("mid") is None
            after = await store.revision()
            assert await store.delete("mid") is False
            assert await store.revision() == after
            assert [r.name for r in await store.list()] == ["alpha", "zed"] and await store.count() == 2

    run(scenario())


def test_replacing_a_record_moves_its_hash_and_each_change_grows_the_revision(backend, tmp_path):
    async def scenario():
        async with opened(backend, tmp_path) as store:
            r1 = await store.put(record("acme", H["a"]))
            r2 = await store.put(record("acme", H["b"], team="x"))
            assert r2 > r1
            assert await store.by_hash(H["a"]) is None
            assert (await store.by_hash(H["b"])).team == "x"
            assert await store.count() == 1

    run(scenario())


def test_a_rotated_key_is_found_by_both_hashes_until_rotated_again(backend, tmp_path):
    async def scenario():
        async with opened(backend, tmp_path) as store:
            first = record("acme", H["a"])
            await store.put(first)
            second = rotated(first, H["b"], now=2000.0, grace_s=60)
            await store.put(second)
            assert await store.by_hash(H["a"]) == second == await store.by_hash(H["b"])
            third = rotated(second, H["c"], now=2001.0)
            await store.put(third)
            assert await store.by_hash(H["a"]) is None
            assert await store.by_hash(H["b"]) == third == await store.by_hash(H["c"])
            await store.delete("acme")
            assert await store.by_hash(H["b"]) is None and await store.by_hash(H["c"]) is None

    run(scenario())


def test_a_hash_cannot_belong_to_two_names(backend, tmp_path):
    async def scenario():
        async with opened(backend, tmp_path) as store:
            await store.put(rotated(record("one", H["a"]), H["b"], now=2000.0, grace_s=60))
            revision = await store.revision()
            for clash in (
                record("two", H["b"]),
                record("two", H["a"]),
                rotated(record("two", H["a"]), H["c"], now=2000.0, grace_s=60),
            ):
                with pytest.raises(KeyHashInUse, match="belongs to 'one'"):
                    await store.put(clash)
            assert await store.revision() == revision
            assert await store.get("two") is None and await store.by_hash(H["c"]) is None
            assert (await store.by_hash(H["a"])).name == "one"

    run(scenario())


def spec(name: str, raw: str, **fields) -> KeySpec:
    return msgspec.convert({"name": name, "key": raw, **fields}, KeySpec)


def test_config_keys_are_loaded_authoritative_for_their_names_and_dropped_when_removed(backend, tmp_path):
    async def scenario():
        async with opened(backend, tmp_path) as store:
            await store.put(record("made-by-api", H["d"]))
            await store.put(record("acme", H["e"], team="api-version"))
            specs = [
                spec("acme", "mux-acme-0123456789abcdef", team="search"),
                spec("beta", "mux-beta-0123456789abcdef"),
            ]
            done = await load_config_keys(store, specs, secret="s", now=5000.0)
            assert done == {"put": ["acme", "beta"], "deleted": []}
            acme = await store.by_hash(hash_key("mux-acme-0123456789abcdef", "s"))
            assert acme.name == "acme" and acme.team == "search" and acme.source == "config"
            assert await store.by_hash(H["e"]) is None
            assert (await store.get("made-by-api")).source == "api"

            revision = await store.revision()
            again = await load_config_keys(store, specs, secret="s", now=6000.0)
            assert again == {"put": [], "deleted": []} and await store.revision() == revision

            changed = [spec("acme", "mux-acme-0123456789abcdef", team="other")]
            assert await load_config_keys(store, changed, secret="s", now=7000.0) == {
                "put": ["acme"],
                "deleted": ["beta"],
            }
            acme = await store.get("acme")
            assert acme.team == "other" and acme.created_at == 5000.0
            assert [r.name for r in await store.list()] == ["acme", "made-by-api"]

    run(scenario())


def test_sqlite_keys_survive_a_restart(tmp_path):
    async def scenario():
        async with opened("sqlite", tmp_path) as store:
            await store.put(FULL)
            revision = await store.revision()
        async with opened("sqlite", tmp_path) as store:
            assert await store.by_hash(H["a"]) == FULL and await store.revision() == revision

    run(scenario())


def test_state_urls_pick_the_backend():
    assert isinstance(key_store("memory"), MemoryKeyStore)
    sqlite = key_store("sqlite:///var/mux.db")
    assert isinstance(sqlite, SQLiteKeyStore) and sqlite.path == "var/mux.db"
    assert key_store("sqlite:////var/mux.db").path == "/var/mux.db"
    assert isinstance(key_store("redis://127.0.0.1:6379/0"), RedisKeyStore)
    with pytest.raises(ValueError, match="unknown state URL"):
        key_store("postgres://x")


def test_an_unreachable_redis_is_key_store_unavailable_not_a_hang():
    async def scenario():
        store = RedisKeyStore("redis://127.0.0.1:9/0", timeout_s=0.5)
        with pytest.raises(KeyStoreUnavailable) as info:
            await store.open()
        assert info.value.status == 503 and info.value.code == "key_store_unavailable"
        await store.close()

    run(scenario())
