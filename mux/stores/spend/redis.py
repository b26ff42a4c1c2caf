"""The spend store in Redis: replicas share it; reserve, settle, release and usage are one Lua script each.

Keys (under ``prefix``): ``c:<counter>`` a hash of the counter's spent (``s``) and reserved (``r``) nano-USD
and one ``h:<request id>`` field per live reservation; ``z:<counter>`` a sorted set of those request ids
scored by expiry (ms), purged inside every script that reads the counter; ``q:<request id>`` the request:
amount, state and its counters, kept ``ttl + retain_s`` — it is the settle marker, so a settle or release
after another one does nothing. Counters expire ``retain_s`` after their period ends (``total`` never).

Settles and releases queued by ``finish_soon`` go in the pipeline of the next reserve (one round trip for
all), or in one of their own a few ms later (``mux.stores.deferred``).

Reservation expiry uses the server's clock (``TIME``) unless the store is given a clock (tests); the period
of a window is computed here from ``clock`` or ``time.time``. Settle and release reach the counters named in
the request record, which a script may do on one server (not across Redis Cluster slots). Amounts are exact up
to 2**53 nano-USD (about 9 million USD) per counter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from mux.money.periods import window as period_window
from mux.stores import redis_server
from mux.stores.redis_server import NOW_MS, Lua
from mux.stores.spend import (
    DEFAULT_RETAIN_S,
    LEASE_SHARE,
    Admission,
    BudgetWindow,
    Clock,
    LeaseCall,
    check_reservation,
    counter_key,
    plan,
    usage_of,
)

PURGE = """
local function purge(c, z, now)
  local lapsed = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #lapsed == 0 then return end
  local drop = 0
  for _, rid in ipairs(lapsed) do
    local a = redis.call('HGET', c, 'h:' .. rid)
    if a then
      drop = drop + tonumber(a)
      redis.call('HDEL', c, 'h:' .. rid)
    end
  end
  if drop > 0 then redis.call('HINCRBY', c, 'r', -drop) end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
end
"""

# KEYS: c_1..c_n, z_1..z_n, q.  ARGV: rid, amount, ttl_ms, keep_request_ms, now_ms|'', n_windows,
# (counter index, cap, enforce) per window, keep_ms per counter (0: forever).
# Answers {refused window (0: admitted), spent_1, reserved_1, ..., spent_n, reserved_n}.
RESERVE = (
    NOW_MS
    + PURGE
    + """
local n = (#KEYS - 1) / 2
local q = KEYS[2 * n + 1]
local rid = ARGV[1]
local amount = tonumber(ARGV[2])
local now = now_ms(ARGV[5])
if redis.call('EXISTS', q) == 1 then return redis.error_reply('MUXDUP request id already reserved') end
local spent, reserved = {}, {}
for i = 1, n do
  purge(KEYS[i], KEYS[n + i], now)
  local v = redis.call('HMGET', KEYS[i], 's', 'r')
  spent[i] = tonumber(v[1]) or 0
  reserved[i] = tonumber(v[2]) or 0
end
local windows = tonumber(ARGV[6])
local refused = 0
for j = 1, windows do
  local b = 6 + (j - 1) * 3
  local i = tonumber(ARGV[b + 1])
  if ARGV[b + 3] == '1' and spent[i] + reserved[i] + amount > tonumber(ARGV[b + 2]) then
    refused = j
    break
  end
end
if refused == 0 then
  local expires = now + tonumber(ARGV[3])
  local list = {}
  for i = 1, n do
    local c, z = KEYS[i], KEYS[n + i]
    local keep = tonumber(ARGV[6 + windows * 3 + i])
    reserved[i] = redis.call('HINCRBY', c, 'r', amount)
    redis.call('HSET', c, 'h:' .. rid, amount)
    redis.call('ZADD', z, expires, rid)
    if keep > 0 then
      redis.call('PEXPIRE', c, keep)
      redis.call('PEXPIRE', z, keep)
    end
    list[i] = {c, z, keep}
  end
  redis.call('HSET', q, 'a', amount, 's', 0, 'k', cjson.encode(list))
  redis.call('PEXPIRE', q, tonumber(ARGV[4]))
end
local out = {refused}
for i = 1, n do
  out[2 * i] = spent[i]
  out[2 * i + 1] = reserved[i]
end
return out
"""
)

# KEYS: q.  ARGV: rid, actual, final state (2 settled, 3 released).  Answers 1 when this call finished it.
FINISH = """
local v = redis.call('HMGET', KEYS[1], 's', 'k')
if v[1] ~= '0' then return 0 end
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
for _, e in ipairs(cjson.decode(v[2])) do
  local c, z, keep = e[1], e[2], e[3]
  local a = redis.call('HGET', c, 'h:' .. rid)
  if a then
    redis.call('HDEL', c, 'h:' .. rid)
    redis.call('HINCRBY', c, 'r', 0 - tonumber(a))  -- not -a: Lua writes -0 as "-0", which is no integer
    redis.call('ZREM', z, rid)
  end
  if actual > 0 then
    redis.call('HINCRBY', c, 's', actual)
    if keep > 0 and redis.call('PTTL', c) < 0 then redis.call('PEXPIRE', c, keep) end
  end
end
redis.call('HSET', KEYS[1], 's', ARGV[3])
return 1
"""

# KEYS: c, z.  ARGV: now_ms|''.  Answers {spent, reserved}.
USAGE = (
    NOW_MS
    + PURGE
    + """
purge(KEYS[1], KEYS[2], now_ms(ARGV[1]))
local v = redis.call('HMGET', KEYS[1], 's', 'r')
return {tonumber(v[1]) or 0, tonumber(v[2]) or 0}
"""
)

# KEYS: c.  ARGV: nano, keep_ms (0: forever).
ADD = """
redis.call('HINCRBY', KEYS[1], 's', ARGV[1])
local keep = tonumber(ARGV[2])
if keep > 0 then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
"""

# KEYS: c, z.  ARGV: lease id, spend, keep, need, want, exact (1/0), cap|'', ttl_ms, now_ms|'', keep_ms, share.
# Answers {granted, spent, reserved} (mux.stores.spend.grant, in Lua).
LEASE = (
    NOW_MS
    + PURGE
    + """
local c, z, rid = KEYS[1], KEYS[2], ARGV[1]
local spend, keep, need, want = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms(ARGV[9])
purge(c, z, now)
local old = redis.call('HGET', c, 'h:' .. rid)
if old then
  redis.call('HDEL', c, 'h:' .. rid)
  redis.call('HINCRBY', c, 'r', 0 - tonumber(old))
  redis.call('ZREM', z, rid)
end
if spend > 0 then redis.call('HINCRBY', c, 's', spend) end
local v = redis.call('HMGET', c, 's', 'r')
local spent, reserved = tonumber(v[1]) or 0, tonumber(v[2]) or 0
local granted
if ARGV[7] == '' then
  granted = keep + math.max(need, want)
else
  local free = tonumber(ARGV[7]) - spent - reserved - keep
  local extra = math.min(want, math.floor(free / tonumber(ARGV[11])))
  if extra < need then
    if ARGV[6] == '1' and free >= need then extra = need else extra = 0 end
  end
  granted = keep + math.max(0, extra)
end
if granted > 0 then
  reserved = redis.call('HINCRBY', c, 'r', granted)
  redis.call('HSET', c, 'h:' .. rid, granted)
  redis.call('ZADD', z, now + tonumber(ARGV[8]), rid)
end
local keep_ms = tonumber(ARGV[10])
if keep_ms > 0 then
  redis.call('PEXPIRE', c, keep_ms)
  redis.call('PEXPIRE', z, keep_ms)
end
return {granted, spent, reserved}
"""
)

_SETTLED, _RELEASED = 2, 3


class RedisSpendStore(redis_server.DeferringRedisBacked):
    """Spend state in the Redis database at ``url`` (or on the given ``client``). Answers as ``SpendStore``.

    Without ``clock``, reservation expiry follows the server's clock; with one (tests), it follows ``clock``.
    """

    _name = "the Redis spend store"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        clock: Clock | None = None,
        prefix: str = "mux:",
        retain_s: float = DEFAULT_RETAIN_S,
    ) -> None:
        super().__init__(url, client)
        self._clock = clock
        self._prefix = prefix
        self._retain = retain_s

    def finish_soon(self, request_id: str, actual_nano: int | None) -> None:
        if actual_nano is not None and actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        self._check_open()
        state = _RELEASED if actual_nano is None else _SETTLED
        self._later.add(self._finish.call([self._prefix + "q:" + request_id], [request_id, actual_nano or 0, state]))

    async def flush(self) -> None:
        await self._later.flush()

    def _load(self, redis: Redis) -> None:
        self._reserve = Lua(redis, RESERVE)
        self._finish = Lua(redis, FINISH)
        self._usage = Lua(redis, USAGE)
        self._add = Lua(redis, ADD)
        self._lease = Lua(redis, LEASE)

    async def lease(self, calls: Sequence[LeaseCall]) -> list[tuple[int, int, int]]:
        """Renew each lease of ``calls`` in one pipeline (with the queued settles); answer per call
        ``(granted, spent, reserved)`` of its counter afterwards (``mux.stores.spend.lease``)."""
        self._check_open()
        now, now_arg = self._now()
        pre = self._prefix
        scripts = [
            self._lease.call(
                [pre + "c:" + call.counter, pre + "z:" + call.counter],
                [
                    call.lease_id,
                    call.spend,
                    call.keep,
                    call.need,
                    call.want,
                    1 if call.exact else 0,
                    "" if call.cap is None else call.cap,
                    int(call.ttl_s * 1000) or 1,
                    now_arg,
                    max(1, self._keep_ms(call.resets, now)) if call.resets is not None else 0,
                    LEASE_SHARE,
                ],
            )
            for call in calls
        ]
        queued = self._later.take()
        try:
            replies = (await redis_server.batch(self._conn(), [*queued, *scripts]))[len(queued) :]
        except Exception:
            self._later.give_back(queued)
            raise
        out = []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            out.append((int(reply[0]), int(reply[1]), int(reply[2])))
        return out

    def _now(self) -> tuple[float, str]:
        """Answer the epoch time for periods and the time argument of the scripts ('' = the server's)."""
        if self._clock is None:
            return time.time(), ""
        now = self._clock()
        return now, str(int(now * 1000))

    async def reserve(
        self, request_id: str, windows: Sequence[BudgetWindow], amount_nano: int, ttl_s: float
    ) -> Admission:
        check_reservation(amount_nano, ttl_s, self._retain)
        self._check_open()
        if not windows:
            return Admission(True, [])
        now, now_arg = self._now()
        p = plan(windows, now)
        pre = self._prefix
        keys = [pre + "c:" + c for c in p.counters] + [pre + "z:" + c for c in p.counters] + [pre + "q:" + request_id]
        args: list[object] = [
            request_id,
            amount_nano,
            int(ttl_s * 1000) or 1,
            int((ttl_s + self._retain) * 1000),
            now_arg,
            len(windows),
        ]
        for w, i in zip(windows, p.index, strict=False):
            args += (i + 1, w.cap_nano, 1 if w.enforce else 0)
        args += [max(1, self._keep_ms(r, now)) if r is not None else 0 for r in p.resets]
        queued = self._later.take()
        if queued:
            try:
                out = (await redis_server.batch(self._conn(), [*queued, self._reserve.call(keys, args)]))[-1]
            except Exception:
                self._later.give_back(queued)
                raise
        else:
            try:
                out = await self._reserve(keys, args)
            except ResponseError as e:
                out = e
        if isinstance(out, Exception):
            if isinstance(out, ResponseError) and "MUXDUP" in str(out):
                raise ValueError(f"request {request_id!r} already holds a reservation") from None
            raise out
        refused = out[0] - 1
        values = [(out[2 * i + 1], out[2 * i + 2]) for i in range(len(p.counters))]
        usages = [usage_of(w, p, i, values[i]) for w, i in zip(windows, p.index, strict=False)]
        return Admission(refused < 0, usages, usages[refused] if refused >= 0 else None)

    async def settle(self, request_id: str, actual_nano: int) -> bool:
        if actual_nano < 0:
            raise ValueError("a spend cannot be negative")
        return await self._end(request_id, actual_nano, _SETTLED)

    async def release(self, request_id: str) -> bool:
        return await self._end(request_id, 0, _RELEASED)

    async def _end(self, request_id: str, actual: int, state: int) -> bool:
        self._check_open()
        return await self._finish([self._prefix + "q:" + request_id], [request_id, actual, state]) == 1

    async def usage(self, window: BudgetWindow) -> tuple[int, int]:
        self._check_open()
        await self._later.flush()
        now, now_arg = self._now()
        start, _ = period_window(window.period, now)
        c = counter_key(window.scope_key, window.period, start)
        spent, reserved = await self._usage([self._prefix + "c:" + c, self._prefix + "z:" + c], [now_arg])
        return spent, reserved

    async def add_spend(self, window: BudgetWindow, nano: int, at: float | None = None) -> None:
        self._check_open()
        now, _ = self._now()
        start, resets = period_window(window.period, now if at is None else at)
        keep = self._keep_ms(resets, now)
        if resets is not None and keep <= 0:
            return  # the period ended more than retain_s ago: its counter is gone for good
        await self._add([self._prefix + "c:" + counter_key(window.scope_key, window.period, start)], [nano, keep])

    def _keep_ms(self, resets: int | None, now: float) -> int:
        """How long a counter of the period ending at ``resets`` is kept, in ms from ``now`` (0: forever; negative:
        already gone)."""
        if resets is None:
            return 0
        return int((resets + self._retain - now) * 1000)
