"""Shared upstream health for one process: circuit breakers, recent latency, and the retry budget.

Every request of the process reads and updates the same ``Health``; the router reads it to order and skip
targets, Dispatch records each attempt's result into it. The clock is injected so tests control time.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from msgspec import Struct

from mux.config import HealthConfig


class TargetHealth(Struct):
    failures: int = 0  # consecutive failures
    opened_at: float | None = None  # when the breaker opened; None while closed
    probing: bool = False  # a half-open probe is in flight
    latency_ms: float | None = None  # EWMA of successful attempts


class Health:
    """Per-target breakers and latency (keyed by ``provider/model``), plus one retry budget."""

    def __init__(self, config: HealthConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or HealthConfig()
        self.clock = clock
        self.targets: dict[str, TargetHealth] = {}
        self.budget = RetryBudget(self.config.retry_ratio, self.config.retry_floor_per_s, clock=clock)

    def _of(self, label: str) -> TargetHealth:
        health = self.targets.get(label)
        if health is None:
            health = self.targets[label] = TargetHealth()
        return health

    def state(self, label: str) -> str:
        """Answer ``closed``, ``open`` or ``half_open`` for a target."""
        health = self.targets.get(label)
        if health is None or health.opened_at is None:
            return "closed"
        if self.clock() - health.opened_at < self.config.breaker_cooldown_s:
            return "open"
        return "half_open"

    def admit(self, label: str) -> bool:
        """Whether an attempt at ``label`` may go ahead now; a half-open breaker admits one probe at a time."""
        state = self.state(label)
        if state == "closed":
            return True
        if state == "open":
            return False
        health = self._of(label)
        if health.probing:
            return False
        health.probing = True
        return True

    def record(self, label: str, ok: bool, latency_ms: float | None = None) -> None:
        """Record one attempt's result: success closes the breaker; enough consecutive failures open it."""
        health = self._of(label)
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
