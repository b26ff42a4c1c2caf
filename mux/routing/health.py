"""Shared upstream health for one process: circuit breakers, rate-limit cooling, recent latency, and the
retry budget.

Every request of the process reads and updates the same ``Health``; the router reads it to order and skip
targets, Dispatch records each attempt's result into it. The clock is injected so tests control time. The
state machine is documented on ``Health`` and in the README ("Health").
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

from msgspec import Struct

from mux.config.schema import HealthConfig
from mux.errors import MuxError, UpstreamError, retry_after_s

Verdict = Literal["fault", "rate_limited", "neutral"]


def verdict(error: MuxError) -> Verdict:
    """What a failed attempt says about its provider.

    ``fault``: the provider's own failure, which counts toward opening its breaker — an upstream 5xx (529
    included) or 408, a timeout, a connection that failed or was lost, a 2xx body mux cannot read, a stream
    cut short or ended by an in-band error. ``rate_limited``: an upstream 429, which cools the target instead.
    ``neutral``: anything else — the client's request refused (by an adapter or by the provider's 4xx), the
    provider refusing the gateway's credentials or account — which neither opens nor closes a breaker."""
    if not isinstance(error, UpstreamError):
        return "neutral"
    status = getattr(error, "upstream_status", None)
    if status == 429:
        return "rate_limited"
    if status is not None:
        return "fault" if status >= 500 or status == 408 else "neutral"
    return "fault" if error.retryable else "neutral"


class TargetHealth(Struct):
    failures: int = 0  # consecutive faults
    opened_at: float | None = None  # when the breaker (last) opened; None while closed
    probing: bool = False  # a half-open probe is in flight
    cooled_until: float | None = None  # rate limited (429) until then
    latency_ms: float | None = None  # EWMA of successful attempts


class Health:
    """Per-target breakers, rate-limit cooling and latency (keyed by ``provider/model``), plus one retry budget.

    The breaker of a target: **closed** (attempts go ahead; ``breaker_failures`` consecutive faults open it),
    **open** (for ``breaker_cooldown_s``: plans skip the target when another candidate is left), **half-open**
    (the cooldown has passed: the next attempt is its probe, and plans skip the target only while that probe
    is in flight). A probe that succeeds closes the breaker; one that faults opens it for a new cooldown; one
    that ends otherwise (the request refused, the client gone, a 429) releases it, counting neither way. Any
    attempt's success closes the breaker. Independently, a target is **cooled** after a 429 until its
    ``Retry-After`` (else ``cooldown_429_s``, at most ``cooldown_429_max_s``): plans try it after the others.

    Health only ever orders and skips; it never refuses: when every candidate is skipped, the router still
    sends the request to the one whose cooldown ends first ("panic routing"), as its probe."""

    def __init__(self, config: HealthConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or HealthConfig()
        self.clock = clock
        self.targets: dict[str, TargetHealth] = {}
        self.budget = RetryBudget(self.config.retry_ratio, self.config.retry_floor_per_s, clock=clock)

    def configure(self, config: HealthConfig) -> None:
        """Apply new settings (a reload): every target keeps its state (failures, open since, probe, cooled
        until, latency), judged from now on by the new thresholds and cooldowns; the retry budget keeps its
        balance under the new ratio and floor."""
        if config == self.config:
            return
        self.config = config
        self.budget.configure(config.retry_ratio, config.retry_floor_per_s)

    def _of(self, label: str) -> TargetHealth:
        health = self.targets.get(label)
        if health is None:
            health = self.targets[label] = TargetHealth()
        return health

    def state(self, label: str) -> str:
        """Answer ``closed``, ``open`` or ``half_open`` for a target's breaker."""
        health = self.targets.get(label)
        if health is None or health.opened_at is None:
            return "closed"
        if self.clock() - health.opened_at < self.config.breaker_cooldown_s:
            return "open"
        return "half_open"

    def closed(self, label: str) -> bool:
        """Whether the target's breaker is closed (the cheap check of the common case)."""
        health = self.targets.get(label)
        return health is None or health.opened_at is None

    def blocked(self, label: str) -> str | None:
        """Answer why a plan should skip the target when it has another candidate (its breaker is open, or
        half-open with its probe in flight), or ``None``."""
        health = self.targets.get(label)
        if health is None or health.opened_at is None:
            return None
        if self.clock() - health.opened_at < self.config.breaker_cooldown_s:
            return "circuit open"
        if health.probing:
            return "circuit half-open, its probe in flight"
        return None

    def reopens_at(self, label: str) -> float:
        """Answer when the target's breaker cooldown ends (clock time; in the past once half-open)."""
        health = self.targets.get(label)
        if health is None or health.opened_at is None:
            return float("-inf")
        return health.opened_at + self.config.breaker_cooldown_s

    def cooled(self, label: str) -> bool:
        """Whether the target is rate limited (a recent 429), so plans should try it after the others."""
        health = self.targets.get(label)
        if health is None or health.cooled_until is None:
            return False
        if self.clock() < health.cooled_until:
            return True
        health.cooled_until = None
        return False

    def cooled_for_s(self, label: str) -> float | None:
        """Answer how many more seconds the target stays cooled (``None`` when it is not)."""
        health = self.targets.get(label)
        if health is None or health.cooled_until is None:
            return None
        left = health.cooled_until - self.clock()
        return round(left, 3) if left > 0 else None

    def admit(self, label: str) -> bool:
        """Start an attempt at ``label``; answer whether it is the breaker's probe. Never refuses (skipping is
        the plan's decision, from ``blocked``): a breaker that is not closed and has no probe in flight takes
        this attempt as its probe — half-open, or open when every candidate was skipped. The caller must end
        a probe with ``record`` or ``release``, whatever happens (``try``/``finally``)."""
        health = self.targets.get(label)
        if health is None or health.opened_at is None or health.probing:
            return False
        health.probing = True
        return True

    def record(self, label: str, ok: bool, latency_ms: float | None = None, *, probe: bool = False) -> None:
        """Record one attempt's success or fault: success closes the breaker; ``breaker_failures`` consecutive
        faults open it, and a fault while it is open or half-open opens it for a new cooldown."""
        health = self._of(label)
        if probe:
            health.probing = False
        if ok:
            health.failures = 0
            health.opened_at = None
            if latency_ms is not None:
                alpha = self.config.latency_alpha
                previous = health.latency_ms
                health.latency_ms = latency_ms if previous is None else alpha * latency_ms + (1 - alpha) * previous
            return
        health.failures += 1
        if health.opened_at is not None or health.failures >= self.config.breaker_failures:
            health.opened_at = self.clock()  # (re)open: a failed half-open probe starts a new cooldown

    def release(self, label: str, probe: bool) -> None:
        """End an attempt that says nothing about the provider's health (the request was refused, the client
        went away): a probe is released, and the next attempt may probe again."""
        if probe:
            self._of(label).probing = False

    def cool(self, label: str, retry_after_s: float | None) -> None:
        """Mark the target rate limited for ``retry_after_s`` (else ``cooldown_429_s``, capped)."""
        seconds = self.config.cooldown_429_s if retry_after_s is None else retry_after_s
        seconds = min(seconds, self.config.cooldown_429_max_s)
        if seconds > 0:
            self._of(label).cooled_until = self.clock() + seconds

    def failed(self, label: str, error: MuxError, *, probe: bool = False) -> Verdict:
        """Record an attempt that ended in ``error`` by its ``verdict``; answer the verdict."""
        kind = verdict(error)
        if kind == "fault":
            self.record(label, False, probe=probe)
        else:
            if kind == "rate_limited":
                self.cool(label, retry_after_s(error))
            self.release(label, probe)
        return kind

    def latency(self, label: str) -> float | None:
        health = self.targets.get(label)
        return health.latency_ms if health is not None else None

    def backoff_s(self, retry: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Answer the wait before retry number ``retry`` (1-based): full-jitter exponential backoff, at least
        the provider's ``Retry-After``."""
        cap = self.config.backoff_max_ms / 1000
        base = self.config.backoff_base_ms / 1000
        delay = rng.uniform(0, min(cap, base * 2 ** (retry - 1)))
        return max(delay, retry_after_s or 0.0)


class RetryBudget:
    """Retries may be at most ``ratio`` of recent requests plus ``floor_per_s`` per second, so a failing
    provider cannot multiply the load sent to it. A token bucket: each request deposits ``ratio``, time
    deposits the floor, each retry withdraws one; the balance is capped at ten seconds' worth."""

    def __init__(self, ratio: float, floor_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.floor_per_s = floor_per_s
        self.clock = clock
        self.cap = max(10.0, 10 * floor_per_s)
        self.balance = self.cap
        self._updated = clock()

    def configure(self, ratio: float, floor_per_s: float) -> None:
        """Apply a new ratio and floor; the balance so far is kept (within the new cap)."""
        self._refill()
        self.ratio, self.floor_per_s = ratio, floor_per_s
        self.cap = max(10.0, 10 * floor_per_s)
        self.balance = min(self.balance, self.cap)

    def _refill(self) -> None:
        now = self.clock()
        self.balance = min(self.cap, self.balance + (now - self._updated) * self.floor_per_s)
        self._updated = now

    def deposit(self) -> None:
        """One first attempt was made."""
        self._refill()
        self.balance = min(self.cap, self.balance + self.ratio)

    def withdraw(self) -> bool:
        """Answer whether one retry may be made now, and account it if so."""
        self._refill()
        if self.balance >= 1.0:
            self.balance -= 1.0
            return True
        return False
