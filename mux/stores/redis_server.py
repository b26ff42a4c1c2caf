"""One Redis database shared by replicas: the client settings and the Lua script call.

Each store call is one ``EVALSHA`` (the script is loaded by the first call that finds it missing). Timeouts
are short and a failed call is retried once without delay, so a dead server is reported quickly as
``StoreUnavailable`` — the layers decide to fail closed or open. A retried script may have run once already:
the scripts are written so that running twice never counts money twice (a second reserve under the same id is
refused, a second settle or release does nothing); a rate-limit acquire may count twice, which only refuses
sooner.

``RedisBacked`` is a store on one such database: ``open`` (a client of its own or the one given, a ping, the
store's scripts), ``close``, ``async with`` and ``_conn()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mux.stores import StoreUnavailable
from mux.stores.deferred import Deferred
from mux.stores.lifecycle import Connected

TIMEOUT_S = 1.0
MAX_CONNECTIONS = 64  # per client (each store has its own): enough for one worker's concurrent calls
_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)

# Lua: the current time in ms, from the caller's clock when one is given (tests), else from the server, so
# replicas with skewed clocks agree.
NOW_MS = """
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""


def client(url: str, *, timeout_s: float = TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> Redis:
    """Answer a pooled client for ``url`` with short timeouts and one immediate retry. The pool holds at most
    ``max_connections``; a call finding them all busy waits for one (up to ``timeout_s``, then
    ``StoreUnavailable``) instead of failing at once with "Too many connections"."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


async def ping(redis: Redis) -> None:
    """Check that the server answers; raise StoreUnavailable naming the cause otherwise."""
    try:
        await redis.ping()
    except _DOWN as e:
        raise StoreUnavailable(f"Redis state unreachable: {e}") from None


class Lua:
    """One Lua script on one client: ``await script(keys, args)`` is one round trip."""

    def __init__(self, redis: Redis, source: str) -> None:
        self._script = redis.register_script(source)

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self._script(keys, args)
        except _DOWN as e:
            raise StoreUnavailable(f"Redis state unreachable: {e}") from None

    def call(self, keys: Sequence[Any], args: Sequence[Any]) -> Call:
        """Answer this script's call on ``keys`` and ``args``, for ``batch``."""
        return (self, keys, args)


Call = tuple[Lua, Sequence[Any], Sequence[Any]]


async def batch(redis: Redis, calls: Sequence[Call]) -> list[Any]:
    """Run ``calls`` in one pipeline (one round trip, not a transaction) and answer each one's reply or
    exception (a ``ResponseError`` stays in the list). A script the server does not have is loaded and its
    calls run again (only those: they did not run)."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    try:
        for _ in range(2):
            pipe = redis.pipeline(transaction=False)
            for i in todo:
                lua, keys, args = calls[i]
                pipe.evalsha(lua._script.sha, len(keys), *keys, *args)
            out = await pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, out, strict=True):
                replies[i] = reply
                if isinstance(reply, NoScriptError):
                    missing.append(i)
            if not missing:
                break
            for lua in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                await redis.script_load(lua._script.script)
            todo = missing
    except _DOWN as e:
        raise StoreUnavailable(f"Redis state unreachable: {e}") from None
    return replies


class RedisBacked(Connected[Redis]):
    """A store in the Redis database at ``url`` (a client of its own, closed by ``close``) or on the given
    ``client`` (left open by ``close``). ``open`` checks that the server answers (``_ping``) and then registers
    the store's scripts (``_load``); ``_conn()`` answers the client or raises RuntimeError ("<_name> is not
    open")."""

    _name = "the Redis store"

    def __init__(self, url: str | None, client: Redis | None, *, timeout_s: float = TIMEOUT_S) -> None:
        if (url is None) == (client is None):
            raise ValueError("give a Redis url or a client, not both")
        self._url = url
        self._given = client
        self._timeout_s = timeout_s

    async def _connect(self) -> Redis:
        redis = self._given
        if redis is None:
            redis = client(self._url, timeout_s=self._timeout_s)  # type: ignore[arg-type]
        try:
            await self._ping(redis)
        except BaseException:
            if self._given is None:
                await redis.aclose()
            raise
        self._load(redis)
        return redis

    async def _disconnect(self, redis: Redis) -> None:
        if self._given is None:
            await redis.aclose()

    async def _ping(self, redis: Redis) -> None:
        """Check that ``redis`` answers (``ping``: StoreUnavailable naming the cause otherwise)."""
        await ping(redis)

    def _load(self, redis: Redis) -> None:
        """Register the store's Lua scripts on ``redis`` (no round trip)."""


class DeferringRedisBacked(RedisBacked):
    """A ``RedisBacked`` store whose after-answer writes are queued in ``self._later`` (``mux.stores.deferred``)
    and sent in batches (``batch``): they ride along with the next call, or go on their own a few ms later, and
    ``close`` sends what is still queued."""

    def __init__(self, url: str | None, client: Redis | None, *, timeout_s: float = TIMEOUT_S) -> None:
        super().__init__(url, client, timeout_s=timeout_s)
        self._later: Deferred[Call] = Deferred(self._run_later, name=self._name)

    async def close(self) -> None:
        if self._held is not None:
            await self._later.close()
        await super().close()

    async def _run_later(self, calls: list[Call]) -> None:
        await batch(self._conn(), calls)
