"""The attempt policy, once for every front door: targets in plan order, retries, backoff, breakers, the
retry budget, the plan's total time, and cascade escalation.

Each target is tried ``1 + retries`` times; a failure is retried or failed over only if its class is in the
plan's ``retry_on`` (an upstream status, ``5xx``, ``timeout``, ``connect``) — other 4xx never are; each retry
needs a token from the shared retry budget; a retry at the same provider waits a full-jitter exponential
backoff (at least its ``Retry-After``), never past the plan's total time. Health skips, never refuses: a
target whose breaker is open is skipped while another is left (README: "Health"). Reads and updates the
shared health; writes one ``Attempt`` per try and ``Note``s for policy decisions into ``ctx.trace``; the
attempt itself (``once``) settles its usage into ``ctx.outcome``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import msgspec

from mux.config.schema import CascadeConfig
from mux.context import Attempt, Context, Note
from mux.errors import MuxError, NoRouteAvailable, UpstreamError, UpstreamTimeout, retry_after_s
from mux.routing.health import Health
from mux.routing.plan import Plan, Target

Build = Callable[[Target], Any]
Once = Callable[[Target, Any, float], Awaitable[Any]]
Check = Callable[[CascadeConfig, Any], "str | None"]


class StreamEnd(msgspec.Struct, gc=False):
    """How a streamed attempt that reached the client ended: its last payloads, or the error that cut it."""

    payloads: list[bytes]
    error: MuxError | None = None
    ttfb_ms: float | None = None
    last: bytes | None = None  # the last payload already sent (for its finish_reason)


async def run_attempts(
    ctx: Context, plan: Plan, build: Build, once: Once, health: Health, rng: random.Random, check: Check | None = None
) -> tuple[Target, Any]:
    """Run the plan's targets under the policy; answer the first success (a stream that failed after its first
    byte counts: nothing can be retried once sent).

    ``build(target)`` prepares an attempt (the upstream request) and raises ``MuxError`` when the target's
    adapter refuses the request: that target is skipped and the next one tried. ``once(target, prepared,
    timeout_s)`` sends it. ``check(cascade, answer)`` answers why a successful answer should be escalated (a
    cascade plan), or ``None`` to keep it. A target whose breaker is open (or whose half-open probe is in
    flight) is skipped while another target is left after it; the last is always tried: health never refuses.
    Every attempt's end is recorded in the shared health by its verdict, a probe's too, whatever ends it.
    Raises the last upstream ``MuxError`` when no attempt succeeds, else the last refusal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.total_timeout_s if plan.total_timeout_s else None
    health.budget.deposit()
    error: MuxError | None = None
    refused: MuxError | None = None
    failed_provider: str | None = None
    failures = 0
    escalated: tuple[Target, Any] | None = None
    outcome = ctx.outcome
    last = len(plan.targets) - 1
    for index, target in enumerate(plan.targets):
        for repeat in range(target.retries + 1):
            if error is not None:
                stop = None
                if not retryable(error, plan.retry_on):
                    stop = ""
                elif not health.budget.withdraw():
                    stop = "retry budget exhausted: no further attempt"
                delay = 0.0
                if stop is None and target.provider.name == failed_provider:
                    delay = health.backoff_s(failures, rng, retry_after_s(error))
                if stop is None and deadline is not None and loop.time() + delay >= deadline:
                    stop = "the route's total time is spent: no further attempt"
                if stop is not None:
                    if stop:
                        ctx.trace.append(Note("policy", note=stop))
                    if escalated is not None:  # a cheaper answer that failed its check beats no answer
                        return escalated
                    raise error
                if delay:
                    await asyncio.sleep(delay)
            label = target.label
            if not health.closed(label):
                blocked = health.blocked(label)
                if blocked is not None:
                    if index < last:  # skip it: another target is left
                        ctx.trace.append(Attempt(label, "skipped", reason=blocked))
                        break
                    if label != plan.panic:  # the plan kept it; it was blocked since: it is sent anyway
                        ctx.trace.append(
                            Note(
                                "policy", note=f"{label}: {blocked}, and no other target is left: sending to it anyway"
                            )
                        )
            try:
                prepared = build(target)
            except MuxError as exc:  # the adapter refuses this request: the next target may serve it
                event = Attempt(label, "skipped", reason=exc.message, error=exc.code, http_status=exc.status)
                ctx.trace.append(event)
                refused = exc
                break
            timeout = target.timeout_s or target.provider.timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - loop.time())
            outcome.attempts += 1
            spent = len(outcome.spent)
            probe = health.admit(label)  # from here on, every way out records or releases it
            started = perf_counter()
            try:
                result = await once(target, prepared, timeout)
            except MuxError as exc:
                health.failed(label, exc, probe=probe)
                _attempt(ctx, target, "error", started, spent, error=exc, retry=repeat)
                error, failed_provider, failures = exc, target.provider.name, failures + 1
                continue
            except BaseException:  # cancelled (the client went away, a deadline) or a bug: no verdict
                health.release(label, probe)
                raise
            latency_ms = (perf_counter() - started) * 1000
            if isinstance(result, StreamEnd) and result.error is not None:
                health.failed(label, result.error, probe=probe)
                _attempt(
                    ctx, target, "partial", started, spent, error=result.error, retry=repeat, ttfb_ms=result.ttfb_ms
                )
                return target, result
            health.record(label, True, latency_ms, probe=probe)
            reason = None
            if check is not None and plan.cascade is not None and index < last and not isinstance(result, StreamEnd):
                reason = check(plan.cascade, result)
            _attempt(
                ctx,
                target,
                "escalated" if reason else "ok",
                started,
                spent,
                retry=repeat,
                reason=reason,
                ttfb_ms=getattr(result, "ttfb_ms", None),
            )
            if reason is None:
                return target, result
            escalated, error = (target, result), None
            break
    if escalated is not None:  # every cheaper answer failed its check and nothing better came: keep it
        return escalated
    raise error or refused or NoRouteAvailable("No target of the plan was attempted.")


def retryable(error: MuxError, retry_on: frozenset[int | str]) -> bool:
    """Whether ``error`` may be retried or failed over under a plan's ``retry_on`` classes."""
    if not isinstance(error, UpstreamError) or not error.retryable:
        return False
    status = getattr(error, "upstream_status", None)
    if isinstance(error, UpstreamTimeout):
        return "timeout" in retry_on
    if error.code in ("upstream_unreachable", "upstream_connection_lost"):
        return "connect" in retry_on
    if status is not None:
        return status in retry_on or (status >= 500 and "5xx" in retry_on)
    return "5xx" in retry_on  # a malformed, empty or cut answer is the provider's fault, like a 5xx


def _attempt(
    ctx: Context,
    target: Target,
    status: str,
    started: float,
    spent: int,
    *,
    error: MuxError | None = None,
    retry: int = 0,
    reason: str | None = None,
    ttfb_ms: float | None = None,
) -> None:
    """Append one attempt to the trace, with the usage and cost it settled (if any)."""
    event = Attempt(
        target.label,
        status,
        latency_ms=round((perf_counter() - started) * 1000, 3),
        ttfb_ms=ttfb_ms,
        retry=retry,
        reason=reason,
    )
    if error is not None:
        event.error = error.code
        event.http_status = getattr(error, "upstream_status", None) or error.status
    settled = ctx.outcome.spent
    if len(settled) > spent:
        usage = settled[-1].usage
        if usage is not None:
            event.prompt_tokens = usage.prompt_tokens
            event.completion_tokens = usage.completion_tokens
        event.cost_usd = settled[-1].cost_usd
    ctx.trace.append(event)
