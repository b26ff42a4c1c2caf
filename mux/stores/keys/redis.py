"""Keys in Redis, shared by every replica.

Layout under a prefix (default ``mux:{keys}:``; the braces keep every key in one Redis Cluster slot):
``rec:<name>`` a hash with the record as JSON (``json``) and its hashes (``h``, ``ph``); ``hash:<hash>``
the name owning a current or previous hash; ``names`` the set of names; ``rev`` the revision. Each write is
one Lua script (atomic: the record, its hash index and the revision change together); ``by_hash`` is one
round trip.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mux.stores.keys import KeyHashInUse, KeyStoreUnavailable
from mux.keys.model import KeyRecord

_decode = msgspec.json.Decoder(KeyRecord).decode
_encode = msgspec.json.Encoder().encode

# Keys are derived from ARGV[1], the prefix (one hash slot). ARGV: prefix, name, json, hash, previous hash or ''.
# Answers {1, new revision}, or {0, owner} when a hash belongs to another name.
_PUT = """
local p, name = ARGV[1], ARGV[2]
local hashes = {ARGV[4]}
if ARGV[5] ~= '' then hashes[2] = ARGV[5] end
for _, h in ipairs(hashes) do
  local owner = redis.call('GET', p .. 'hash:' .. h)
  if owner and owner ~= name then return {0, owner} end
end
local old = redis.call('HMGET', p .. 'rec:' .. name, 'h', 'ph')
for _, h in ipairs(old) do
  if h and h ~= '' then redis.call('DEL', p .. 'hash:' .. h) end
end
redis.call('HSET', p .. 'rec:' .. name, 'json', ARGV[3], 'h', ARGV[4], 'ph', ARGV[5])
for _, h in ipairs(hashes) do redis.call('SET', p .. 'hash:' .. h, name) end
redis.call('SADD', p .. 'names', name)
return {1, redis.call('INCR', p .. 'rev')}
"""

# ARGV: prefix, name. Answers the new revision, or 0 when there was no such key.
_DELETE = """
local p, name = ARGV[1], ARGV[2]
local old = redis.call('HMGET', p .. 'rec:' .. name, 'h', 'ph')
if not old[1] then return 0 end
for _, h in ipairs(old) do
  if h and h ~= '' then redis.call('DEL', p .. 'hash:' .. h) end
end
redis.call('DEL', p .. 'rec:' .. name)
redis.call('SREM', p .. 'names', name)
return redis.call('INCR', p .. 'rev')
"""

# ARGV: prefix, hash. Answers the record's JSON or nil.
_BY_HASH = """
local name = redis.call('GET', ARGV[1] .. 'hash:' .. ARGV[2])
if not name then return false end
return redis.call('HGET', ARGV[1] .. 'rec:' .. name, 'json')
"""


class RedisKeyStore:
    """A ``KeyStore`` in Redis at ``url`` (or on an existing ``client``), with 1 s socket timeouts so an
    unreachable server fails requests quickly (``KeyStoreUnavailable``) instead of hanging them."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "mux:{keys}:",
                 client: aioredis.Redis | None = None, timeout_s: float = 1.0) -> None:
        self.prefix = prefix
        self._url = url
        self._timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None
        self._scripts: dict[str, Any] = {}

    async def open(self) -> None:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self._url, socket_timeout=self._timeout_s,
                                                   socket_connect_timeout=self._timeout_s)
        for name, source in (("put", _PUT), ("delete", _DELETE), ("by_hash", _BY_HASH)):
            self._scripts[name] = self._client.register_script(source)
        await self._call(self._client.ping())

    async def close(self) -> None:
        if self._client is not None and self._owns_client:
            client, self._client = self._client, None
            await client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise KeyStoreUnavailable(f"Key store (Redis) unreachable: {type(exc).__name__}.") from None

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisKeyStore is not open")
        return self._client

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        raw = await self._call(self._scripts["by_hash"](args=[self.prefix, key_hash], client=self._redis))
        return _decode(raw) if raw else None

    async def get(self, name: str) -> KeyRecord | None:
        raw = await self._call(self._redis.hget(f"{self.prefix}rec:{name}", "json"))
        return _decode(raw) if raw else None

    async def list(self) -> list[KeyRecord]:
        names = sorted(n.decode() for n in await self._call(self._redis.smembers(f"{self.prefix}names")))
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(f"{self.prefix}rec:{name}", "json")
        return [_decode(raw) for raw in await self._call(pipe.execute()) if raw]

    async def count(self) -> int:
        return await self._call(self._redis.scard(f"{self.prefix}names"))

    async def revision(self) -> int:
        raw = await self._call(self._redis.get(f"{self.prefix}rev"))
        return int(raw) if raw else 0

    async def put(self, record: KeyRecord) -> int:
        args = [self.prefix, record.name, _encode(record), record.key_hash, record.previous_hash or ""]
        ok, value = await self._call(self._scripts["put"](args=args, client=self._redis))
        if not ok:
            raise KeyHashInUse(record.name, value.decode())
        return int(value)

    async def delete(self, name: str) -> bool:
        return await self._call(self._scripts["delete"](args=[self.prefix, name], client=self._redis)) > 0

