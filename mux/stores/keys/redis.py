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

from mux.keys.model import KeyRecord
from mux.stores import redis_server
from mux.stores.keys import KeyHashInUse, KeyStoreUnavailable

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


class RedisKeyStore(redis_server.RedisBacked):
    """A ``KeyStore`` in Redis at ``url`` (or on an existing ``client``), with the client settings of
    ``mux.stores.redis_server`` (1 s socket timeouts, one immediate retry) so an unreachable server fails
    requests quickly (``KeyStoreUnavailable``) instead of hanging them."""

    _name = "RedisKeyStore"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "mux:{keys}:",
        client: aioredis.Redis | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        super().__init__(None if client is not None else url, client, timeout_s=timeout_s)
        self.prefix = prefix
        self._scripts: dict[str, Any] = {}

    async def _ping(self, redis: aioredis.Redis) -> None:
        await self._call(redis.ping())

    def _load(self, redis: aioredis.Redis) -> None:
        for name, source in (("put", _PUT), ("delete", _DELETE), ("by_hash", _BY_HASH)):
            self._scripts[name] = redis.register_script(source)

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise KeyStoreUnavailable(f"Key store (Redis) unreachable: {type(exc).__name__}.") from None

    def _script(self, name: str, args: list[Any]) -> Any:
        """Answer the call of the script ``name`` with ``args`` (raise RuntimeError when not open)."""
        redis = self._conn()
        return self._scripts[name](args=args, client=redis)

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        raw = await self._call(self._script("by_hash", [self.prefix, key_hash]))
        return _decode(raw) if raw else None

    async def get(self, name: str) -> KeyRecord | None:
        raw = await self._call(self._conn().hget(f"{self.prefix}rec:{name}", "json"))
        return _decode(raw) if raw else None

    async def list(self) -> list[KeyRecord]:
        names = sorted(n.decode() for n in await self._call(self._conn().smembers(f"{self.prefix}names")))
        if not names:
            return []
        pipe = self._conn().pipeline(transaction=False)
        for name in names:
            pipe.hget(f"{self.prefix}rec:{name}", "json")
        return [_decode(raw) for raw in await self._call(pipe.execute()) if raw]

    async def count(self) -> int:
        return await self._call(self._conn().scard(f"{self.prefix}names"))

    async def revision(self) -> int:
        raw = await self._call(self._conn().get(f"{self.prefix}rev"))
        return int(raw) if raw else 0

    async def put(self, record: KeyRecord) -> int:
        args = [self.prefix, record.name, _encode(record), record.key_hash, record.previous_hash or ""]
        ok, value = await self._call(self._script("put", args))
        if not ok:
            raise KeyHashInUse(record.name, value.decode())
        return int(value)

    async def delete(self, name: str) -> bool:
        return await self._call(self._script("delete", [self.prefix, name])) > 0
