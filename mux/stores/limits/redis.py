"""The rate-limit store in Redis: replicas share every limit; acquire and correct are one Lua script each.

Keys (under ``prefix``): ``rl:r:<scope>`` and ``rl:t:<scope>``, hashes of a GCRA bucket's level (``l``) and
the µs time it was written (``t``), expiring a second after the bucket has drained. The time is the server's
(``TIME``), so replicas with skewed clocks agree; a store given a ``clock`` (tests) uses that instead. The
script is ``mux.money.gcra`` in Lua, in the same integers.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from mux.stores import redis_server
from mux.stores.limits import UNLIMITED, Clock, Limit, RateDecision, check, limit_state
from mux.stores.redis_server import Lua

GCRA = """
local W = 60000000
local function now_us(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function level_now(key, now, limit)
  local v = redis.call('HMGET', key, 'l', 't')
  local level = tonumber(v[1])
  if not level then return 0 end
  local elapsed = now - tonumber(v[2])
  if elapsed <= 0 then return level end
  return math.max(0, level - elapsed * limit)
end
-- {admitted, level, remaining, reset_us, retry_us}; retry_us -1: never
local function take(level, cost, limit)
  local cap = limit * W
  local want = level + cost * W
  if want <= cap then return {1, want, math.floor((cap - want) / W), math.ceil(want / limit), 0} end
  local retry = -1
  if cost * W <= cap then retry = math.ceil((want - cap) / limit) end
  return {0, level, math.max(0, math.floor((cap - level) / W)), math.ceil(level / limit), retry}
end
local function store(key, level, now, limit, slack_ms)
  redis.call('HSET', key, 'l', level, 't', now)
  redis.call('PEXPIRE', key, math.ceil(level / limit / 1000) + slack_ms)
end
"""

# KEYS: requests bucket, tokens bucket.  ARGV: rpm (0: none), tpm (0: none), tokens, now_us|'', slack_ms,
# requests (1 when absent).
# Answers {admitted, then per limit: admitted, remaining, reset_us, retry_us}.
ACQUIRE = (
    GCRA
    + """
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us(ARGV[4])
local r_level, t_level = 0, 0
local r, t = {1, 0, 0, 0, 0}, {1, 0, 0, 0, 0}
if rpm > 0 then
  r_level = level_now(KEYS[1], now, rpm)
  r = take(r_level, tonumber(ARGV[6] or '1'), rpm)
end
if tpm > 0 then
  t_level = level_now(KEYS[2], now, tpm)
  t = take(t_level, tokens, tpm)
end
local admitted = r[1] == 1 and t[1] == 1
if admitted then
  local slack = tonumber(ARGV[5])
  if rpm > 0 then store(KEYS[1], r[2], now, rpm, slack) end
  if tpm > 0 then store(KEYS[2], t[2], now, tpm, slack) end
else
  if rpm > 0 and r[1] == 1 then r = take(r_level, 0, rpm) end
  if tpm > 0 and t[1] == 1 then t = take(t_level, 0, tpm) end
end
return {admitted and 1 or 0, r[1], r[3], r[4], r[5], t[1], t[3], t[4], t[5]}
"""
)

# KEYS: a tokens (or requests) bucket.  ARGV: its limit, the delta, now_us|'', slack_ms.
CORRECT = (
    GCRA
    + """
local tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us(ARGV[3])
store(KEYS[1], math.max(0, level_now(KEYS[1], now, tpm) + delta * W), now, tpm, tonumber(ARGV[4]))
return 1
"""
)


class RedisRateLimitStore(redis_server.DeferringRedisBacked):
    """Rate-limit state in the Redis database at ``url`` (or on ``client``). Answers as ``RateLimitStore``."""

    _name = "the Redis rate-limit store"

    def __init__(
        self, url: str | None = None, *, client: Redis | None = None, clock: Clock | None = None, prefix: str = "mux:"
    ) -> None:
        super().__init__(url, client)
        self._clock = clock
        self._prefix = prefix + "rl:"
        # A bucket's key expires once it has drained, plus this slack. Redis expires keys on its own clock, so a
        # store given another clock keeps them an hour longer, for that clock to reach.
        self._slack_ms = 1000 if clock is None else 3_600_000

    def correct_soon(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        if tpm is None or token_delta == 0:
            return
        check(None, tpm, 0)
        self._check_open()
        self._later.add(
            self._correct.call([self._prefix + "t:" + scope_key], [tpm, token_delta, self._now(), self._slack_ms])
        )

    async def flush(self) -> None:
        await self._later.flush()

    def _load(self, redis: Redis) -> None:
        self._acquire = Lua(redis, ACQUIRE)
        self._correct = Lua(redis, CORRECT)

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1_000_000))

    def give_back_soon(self, scope_key: str, rpm: int | None, tpm: int | None, requests: int, tokens: int) -> None:
        self._check_open()
        p, now = self._prefix, self._now()
        if rpm is not None and requests:
            self._later.add(self._correct.call([p + "r:" + scope_key], [rpm, -requests, now, self._slack_ms]))
        if tpm is not None and tokens:
            self._later.add(self._correct.call([p + "t:" + scope_key], [tpm, -tokens, now, self._slack_ms]))

    async def acquire(
        self, scope_key: str, rpm: int | None, tpm: int | None, tokens: int, requests: int = 1
    ) -> RateDecision:
        check(rpm, tpm, tokens)
        self._check_open()
        if rpm is None and tpm is None:
            return UNLIMITED
        p = self._prefix
        keys, args = (
            [p + "r:" + scope_key, p + "t:" + scope_key],
            [rpm or 0, tpm or 0, tokens, self._now(), self._slack_ms, requests],
        )
        queued = self._later.take()
        if queued:
            try:
                out = (await redis_server.batch(self._conn(), [*queued, self._acquire.call(keys, args)]))[-1]
            except Exception:
                self._later.give_back(queued)
                raise
            if isinstance(out, Exception):
                raise out
        else:
            out = await self._acquire(keys, args)
        r = limit_state(rpm, out[2], out[3], out[4], out[1] == 1) if rpm is not None else None
        t = limit_state(tpm, out[6], out[7], out[8], out[5] == 1) if tpm is not None else None
        return RateDecision(out[0] == 1, r, t)

    async def acquire_all(self, limits: Sequence[Limit], tokens: int) -> list[RateDecision]:
        """Every limit's script in one pipeline (one round trip, with the queued corrections): the limits after
        a refusing one take too, and like the earlier ones give their tokens back but keep the request."""
        for _, rpm, tpm in limits:
            check(rpm, tpm, tokens)
        self._check_open()
        if len(limits) == 1:
            return [await self.acquire(*limits[0], tokens)]
        p, now = self._prefix, self._now()
        calls = [
            self._acquire.call([p + "r:" + key, p + "t:" + key], [rpm or 0, tpm or 0, tokens, now, self._slack_ms])
            for key, rpm, tpm in limits
        ]
        queued = self._later.take()
        try:
            replies = (await redis_server.batch(self._conn(), [*queued, *calls]))[len(queued) :]
        except Exception:
            self._later.give_back(queued)
            raise
        out: list[RateDecision] = []
        for (_, rpm, tpm), reply in zip(limits, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if rpm is None and tpm is None:
                out.append(UNLIMITED)
                continue
            r = limit_state(rpm, reply[2], reply[3], reply[4], reply[1] == 1) if rpm is not None else None
            t = limit_state(tpm, reply[6], reply[7], reply[8], reply[5] == 1) if tpm is not None else None
            out.append(RateDecision(reply[0] == 1, r, t))
        refused = next((i for i, d in enumerate(out) if not d.admitted), None)
        if refused is None:
            return out
        for (key, _, tpm), decision in zip(limits, out, strict=True):
            if decision.admitted:
                self.correct_soon(key, tpm, -tokens)
        return out[: refused + 1]

    async def correct(self, scope_key: str, tpm: int | None, token_delta: int) -> None:
        if tpm is None or token_delta == 0:
            return
        check(None, tpm, 0)
        self._check_open()
        await self._correct([self._prefix + "t:" + scope_key], [tpm, token_delta, self._now(), self._slack_ms])
