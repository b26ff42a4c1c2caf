"""RateLimitLayer: requests and tokens per minute per virtual key, end user, tag or team, shared by every
worker and replica through the state store (GCRA, ``mux.money.gcra``: no fixed window, so no 2x at a
window's edge).

Reads ``ctx.request`` (decoding it if no layer did), ``ctx.key`` and ``ctx.mlx`` when present; after the inner
app answered, ``ctx.outcome``. Writes ``ctx.ratelimit`` (``ok``, ``limited``, ``fail_open``). Answers 429
``rate_limit_exceeded`` itself.

**Which limits apply**: a virtual key's own ``rpm``/``tpm`` (named ``key:<name>``) and every configured
limit whose scope the request matches (``mux.money.scopes``); each limit keeps one bucket per scope key.
They are taken in one store call (``RateLimitStore.acquire_all``: one SQLite transaction, one Redis
pipeline), the narrowest scope first (end user, key, tags, team, everything); when one refuses, the tokens
the earlier ones took are given back, but their request count stays taken (it only makes them refuse
sooner; on Redis, where the pipeline runs every limit, the later ones' too).

**Tokens** are the prompt estimate (``mux.money.estimate.prompt_estimate``, made once and shared with the
budgets) up front; once the inner app has returned (after a stream's last byte), each token limit is corrected
by the real usage over every attempt (prompt and completion tokens) minus the estimate, within a few ms (the
store batches corrections). A request that failed without usage gives its estimate back; one answered without
usage keeps it.

**Headers**, in OpenAI's naming and format, on every limited answer and on the 429: ``x-ratelimit-limit-
requests``, ``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` and the ``-tokens`` three,
for the limit with the least left of each kind. OpenAI's rate-limit guide ("Rate limits in headers",
platform.openai.com/docs/guides/rate-limits, found with the search tool) lists them with sample values
``60``, ``59``, ``1s`` and ``150000``, ``149984``, ``6m0s``: the reset is "the time until the rate limit
resets to its initial state" written as a Go duration (``12ms``, ``1s``, ``6m0s``; ``duration_text``). A
429 adds ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms``, which the openai SDK reads
first (``_parse_retry_after_header``); a request larger than the limit itself never fits and gets
``x-should-retry: false`` instead.

**State unreachable**: rate limits fail open — the request is served and a warning logged (at most one per
``WARN_EVERY_S``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from time import monotonic
from typing import TYPE_CHECKING, Any

import structlog
from msgspec import Struct

from mux.asgi import ASGIApp, Message, Receive, Scope, Send
from mux.context import Context, Outcome, at_end
from mux.errors import RateLimited
from mux.ingress import deny, ingress_of, with_request
from mux.money.estimate import prompt_estimate
from mux.money.scopes import Scope as Who
from mux.money.scopes import key_scope
from mux.stores import StoreUnavailable
from mux.stores.limits import Limit, LimitState, RateDecision, RateLimitStore

if TYPE_CHECKING:
    from mux.routing.live import LiveRouting

WARN_EVERY_S = 10.0
MEMO_SIZE = 4096  # identities whose applicable limits are remembered (the memo starts over past it)


# ---- pure decisions -------------------------------------------------------------------------------------


class LimitRule(Struct, frozen=True, gc=False):
    """One configured rate limit, compiled."""

    name: str
    scope: Any  # mux.money.scopes.Scope
    rpm: int | None
    tpm: int | None


class Bucket(Struct, frozen=True, gc=False):
    """A limit that applies to one request: its name, the store's bucket key and its limits."""

    name: str
    key: str
    rpm: int | None
    tpm: int | None
    rank: int


def compile_limits(limits: Sequence[Any]) -> list[LimitRule]:
    """Answer the rules of ``limits`` (``mux.config.RateLimitConfig``)."""
    return [
        LimitRule(
            c.name, Who(key=c.scope.key, team=c.scope.team, end_user=c.scope.end_user, tags=c.scope.tag), c.rpm, c.tpm
        )
        for c in limits
    ]


def applicable(rules: Sequence[LimitRule], key: Any, end_user: str | None, tags: dict[str, str]) -> list[Bucket]:
    """Answer the limits that apply to a request by virtual key ``key`` (a ``KeyRecord`` or None), end user
    ``end_user`` and ``tags``, the narrowest scope first."""
    out: list[Bucket] = []
    name = team = None
    if key is not None:
        name, team = key.name, key.team
        if key.rpm is not None or key.tpm is not None:
            out.append(Bucket(f"key:{name}", "key|" + key_scope(name), key.rpm, key.tpm, 1))
    for rule in rules:
        scope_key = rule.scope.of(name, team, end_user, tags)
        if scope_key is not None:
            out.append(Bucket(rule.name, f"{rule.name}|{scope_key}", rule.rpm, rule.tpm, rule.scope.rank))
    if len(out) > 1:
        out.sort(key=lambda b: b.rank)
    return out


class Applicable(Struct, frozen=True, gc=False):
    """The limits that apply to one identity, laid out for the request path: the buckets, the store's
    ``(key, rpm, tpm)`` of each, and whether any counts tokens."""

    buckets: list[Bucket]
    limits: list[Limit]
    tokens: bool


def laid_out(buckets: list[Bucket]) -> Applicable:
    """Answer ``buckets`` laid out for the request path."""
    return Applicable(buckets, [(b.key, b.rpm, b.tpm) for b in buckets], any(b.tpm is not None for b in buckets))


def duration_text(seconds: float) -> str:
    """Answer ``seconds`` as OpenAI writes a reset time, a Go duration rounded up to the millisecond:
    ``0s``, ``12ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h0m0s``."""
    if math.isinf(seconds):
        return "never"
    return _ms_text(math.ceil(seconds * 1000 - 1e-6))


@lru_cache(maxsize=4096)
def _ms_text(ms: int) -> str:
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    sec = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def least(states: Sequence[LimitState | None]) -> LimitState | None:
    """Answer the state with the least remaining (the longest reset among equals), None when there is none."""
    best = None
    for s in states:
        if s is not None and (
            best is None or s.remaining < best.remaining or s.remaining == best.remaining and s.reset_s > best.reset_s
        ):
            best = s
    return best


_NAMES = {
    kind: tuple(f"x-ratelimit-{what}-{kind}".encode() for what in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}
_REQUESTS, _TOKENS = _NAMES["requests"], _NAMES["tokens"]


_FIXED: dict[tuple[int, float], tuple[bytes, bytes]] = {}  # (limit, reset_s) -> their header values


def _fixed(state: LimitState) -> tuple[bytes, bytes]:
    """Answer the ``limit`` and ``reset`` header values of ``state``, remembered (a limit's reset stays the
    same while requests are admitted against one allowance)."""
    key = (state.limit, state.reset_s)
    found = _FIXED.get(key)
    if found is None:
        if len(_FIXED) >= MEMO_SIZE:
            _FIXED.clear()
        found = _FIXED[key] = (b"%d" % state.limit, duration_text(state.reset_s).encode())
    return found


def limit_headers(requests: LimitState | None, tokens: LimitState | None) -> list[tuple[bytes, bytes]]:
    """Answer OpenAI's ``x-ratelimit-*`` headers for a requests and a tokens limit (each may be None)."""
    headers: list[tuple[bytes, bytes]] = []
    if requests is not None:
        limit, reset = _fixed(requests)
        headers += ((_REQUESTS[0], limit), (_REQUESTS[1], b"%d" % requests.remaining), (_REQUESTS[2], reset))
    if tokens is not None:
        limit, reset = _fixed(tokens)
        headers += ((_TOKENS[0], limit), (_TOKENS[1], b"%d" % tokens.remaining), (_TOKENS[2], reset))
    return headers


def admitted_headers(decisions: Sequence[RateDecision]) -> list[tuple[bytes, bytes]]:
    """Answer the headers of an admitted request: the tightest requests and tokens limit it passed."""
    if len(decisions) == 1:
        return limit_headers(decisions[0].requests, decisions[0].tokens)
    return limit_headers(least([d.requests for d in decisions]), least([d.tokens for d in decisions]))


def refusal(bucket: Bucket, decision: RateDecision, tokens: int) -> RateLimited:
    """Answer the 429 for ``bucket``'s refusal, in OpenAI's wording and shape (``type`` is ``requests`` or
    ``tokens``, the kind that refused)."""
    r, t = decision.requests, decision.tokens
    by_tokens = t is not None and not t.admitted and (r is None or r.admitted or t.retry_after_s > r.retry_after_s)
    state = t if by_tokens else r
    assert state is not None
    kind, unit = ("tokens", "TPM") if by_tokens else ("requests", "RPM")
    wait = decision.retry_after_s
    headers = [(k.decode(), v.decode()) for k, v in limit_headers(r, t)]
    if math.isinf(wait):
        message = (
            f"Request too large for rate limit '{bucket.name}' on tokens per min (TPM): Limit {state.limit}, "
            f"Requested {tokens} (estimated). Send fewer tokens."
        )
        headers.append(("x-should-retry", "false"))
    else:
        message = (
            f"Rate limit reached for '{bucket.name}' on {kind} per min ({unit}): Limit {state.limit}, "
            f"Remaining {state.remaining}. Please try again in {duration_text(wait)}."
        )
        headers += [
            ("retry-after", str(max(1, math.ceil(wait)))),
            ("retry-after-ms", str(max(1, math.ceil(wait * 1000)))),
        ]
    error = RateLimited(message, headers=headers)
    error.type = kind
    return error


def real_tokens(outcome: Outcome, answered: bool) -> int | None:
    """Answer the tokens the request really used over every attempt, 0 for a failure without usage, or None
    when it was answered without any usage (keep the estimate)."""
    total = None
    for spend in outcome.spent:
        usage = spend.usage
        if usage is not None:
            total = (total or 0) + usage.prompt_tokens + usage.completion_tokens
    if total is not None:
        return total
    return None if answered else 0


# ---- the layer ------------------------------------------------------------------------------------------


class RateLimitLayer:
    reads: frozenset[str] = frozenset()  # key and mlx are used when present
    reads_after = frozenset({"outcome"})
    writes = frozenset({"ratelimit"})

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: RateLimitStore,
        limits: Sequence[Any] | None = None,
        routing: LiveRouting | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
        logger: Any = None,
    ) -> None:
        """``limits`` are ``RateLimitConfig``s; without them the layer follows ``routing``'s served config (a
        reload applies their edits), or has none. ``store`` is the rate-limit store (``mux.stores.limits``)."""
        self.app = app
        self.store = store
        self.routing = routing
        self.max_body_bytes = max_body_bytes
        self.logger = logger or structlog.get_logger("mux.ratelimit")
        self._given = limits
        self._source: Any = None
        self.rules: list[LimitRule] = []
        self._buckets: dict[tuple, Applicable] = {}  # who -> applicable buckets, for the current rules
        self._warned_at = -math.inf
        self._rules_now()

    def _rules_now(self) -> list[LimitRule]:
        limits = self._given if self._given is not None else self.routing.config.rate_limits if self.routing else ()
        if limits is not self._source:
            self.rules, self._source = compile_limits(limits), limits
            self._buckets = {}
        return self.rules

    def _applicable(self, key: Any, end_user: str | None, tags: dict[str, str]) -> Applicable:
        """``applicable`` for the current rules, laid out and remembered per identity (at most ``MEMO_SIZE`` of
        them); the answer is shared: never change it."""
        who = (
            (key.name, key.team, key.rpm, key.tpm) if key is not None else None,
            end_user,
            tuple(tags.items()) if tags else (),
        )
        found = self._buckets.get(who)
        if found is None:
            if len(self._buckets) >= MEMO_SIZE:
                self._buckets.clear()
            found = self._buckets[who] = laid_out(applicable(self.rules, key, end_user, tags))
        return found

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope["type"] != "http" or ingress_of(scope) is None:
            return self.app(scope, receive, send)
        rules = self._rules_now()
        key = scope["mux"].key  # ingress_of made the context
        if not rules and (key is None or key.rpm is None and key.tpm is None):  # no store round trip
            return self.app(scope, receive, send)
        return with_request(scope, receive, send, self.max_body_bytes, self._limit)

    def _limit(self, ctx: Context, request: Any, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        mlx = ctx.mlx
        found = (
            self._applicable(ctx.key, mlx.end_user, mlx.tags)
            if mlx is not None
            else self._applicable(ctx.key, None, {})
        )
        if not found.buckets:
            return self.app(scope, receive, send)
        tokens = prompt_estimate(ctx) if found.tokens else 0
        if ctx.finishers is not None:
            # the common case, without a coroutine of this layer in the request's await chain: admitted in
            # memory (an allowance, ``acquire_all_nowait``), the token correction left for the request's end
            nowait = getattr(self.store, "acquire_all_nowait", None)
            decisions = nowait(found.limits, tokens) if nowait is not None else None
            if decisions is not None:
                ctx.ratelimit = "ok"
                limited_send, correct = self._serving(ctx, found, tokens, decisions, send)
                at_end(ctx, correct)
                return self.app(scope, receive, limited_send)
        return self._limit_waiting(ctx, found, tokens, scope, receive, send)

    async def _limit_waiting(
        self, ctx: Context, found: Applicable, tokens: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        buckets = found.buckets
        try:
            decisions = await self.store.acquire_all(found.limits, tokens)
            last = decisions[-1]
            if not last.admitted:  # the store gave the earlier limits' tokens back
                ctx.ratelimit = "limited"
                return await deny(scope, send, refusal(buckets[len(decisions) - 1], last, tokens))
        except StoreUnavailable as exc:
            now = monotonic()
            if now - self._warned_at >= WARN_EVERY_S:
                self._warned_at = now
                self.logger.warning(
                    "rate_limit_state_unavailable", request_id=ctx.request_id, error=str(exc), action="fail_open"
                )
            ctx.ratelimit = "fail_open"
            return await self.app(scope, receive, send)
        ctx.ratelimit = "ok"
        limited_send, correct = self._serving(ctx, found, tokens, decisions, send)
        try:
            await self.app(scope, receive, limited_send)
        finally:
            correct()

    def _serving(
        self, ctx: Context, found: Applicable, tokens: int, decisions: Sequence[RateDecision], send: Send
    ) -> tuple[Send, Callable[[], None]]:
        """Answer the ``send`` that adds the admitted request's headers, and what corrects its token limits by
        its real usage once it is done (never raises)."""
        headers = admitted_headers(decisions)
        answered = False

        def limited_send(message: Message) -> Any:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = 200 <= message["status"] < 300
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            return send(message)

        def correct() -> None:
            if found.tokens:
                real = real_tokens(ctx.outcome, answered)
                if real is not None and real != tokens:
                    self._correct(found.buckets, real - tokens)

        return limited_send, correct

    def _correct(self, buckets: Sequence[Bucket], delta: int) -> None:
        """Add ``delta`` tokens to each token limit of ``buckets``, batched off the request path by the store
        (``RateLimitStore.correct_soon``); a failure is logged and skipped."""
        if not delta:
            return
        for bucket in buckets:
            if bucket.tpm is not None:
                try:
                    self.store.correct_soon(bucket.key, bucket.tpm, delta)
                except Exception as exc:  # noqa: BLE001 - the answer is sent: report, never fail it afterwards
                    self.logger.warning(
                        "rate_limit_correction_skipped", bucket=bucket.name, error=f"{type(exc).__name__}: {exc}"
                    )
                    return
