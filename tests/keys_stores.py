"""Open each key store backend for a test: memory, a SQLite file in a temporary directory, and the real
Redis at 127.0.0.1:6379 (db 13) under a prefix of its own, deleted afterwards. An unreachable Redis fails
the test; it is never skipped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis

from mux.stores.keys import KeyStore, key_store

REDIS_URL = "redis://127.0.0.1:6379/13"
BACKENDS = ["memory", "sqlite", "redis"]


def unique_prefix() -> str:
    return f"muxtest:{{{uuid.uuid4().hex}}}:"


async def drop_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def url_for(backend: str, tmp_path: Path) -> str:
    return {"memory": "memory", "sqlite": f"sqlite:///{tmp_path / 'keys.db'}", "redis": REDIS_URL}[backend]


@asynccontextmanager
async def opened(backend: str, tmp_path: Path, prefix: str | None = None) -> AsyncIterator[KeyStore]:
    """Yield an open store of ``backend``; Redis ones share ``prefix`` (new if not given), dropped at the end
    when it was made here."""
    own = prefix is None
    prefix = prefix or unique_prefix()
    store = key_store(url_for(backend, tmp_path), prefix=prefix)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if backend == "redis" and own:
            await drop_prefix(prefix)
