"""The decision trace: what the router planned and what happened to each attempt, as one JSON document.

Built from ``ctx.plan`` (RouterLayer; its ``notes`` are the router's policy notes, such as panic routing) and
``ctx.trace`` (the ``Attempt`` and ``Note`` events Dispatch and the layers append); returned under
``mlx:trace`` when a request asks for it, answered alone for ``x-mux-dry-run: true``, and kept in every
request's log record. The schema is documented in the README ("Decision trace").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from mux.context import Attempt, TraceEvent

if TYPE_CHECKING:
    from mux.routing.plan import Plan, Target

TRACE_SCHEMA_VERSION = 1


def decision_trace(plan: Plan | None, events: list[TraceEvent], *, dry_run: bool = False) -> dict[str, Any]:
    """Answer the decision trace for a plan (may be ``None`` when planning failed) and the trace events."""
    attempts: list[Attempt] = []
    notes: list[Any] = [msgspec.to_builtins(n) for n in plan.notes] if plan is not None and plan.notes else []
    for event in events:
        if type(event) is Attempt:
            attempts.append(event)
        else:
            notes.append(msgspec.to_builtins(event))
    if plan is None:
        trace: dict[str, Any] = {"schema": TRACE_SCHEMA_VERSION}
    else:
        trace = {
            "schema": TRACE_SCHEMA_VERSION,
            "requested": plan.requested,
            "config": plan.route,
            "config_version": plan.route_version,
            "config_hash": plan.route_hash,
            "strategy": plan.strategy,
            "variant": plan.variant,
            "candidates": [_candidate(t) for t in plan.targets],
            "skipped": [{"target": s.target, "reason": s.reason} for s in plan.skipped] if plan.skipped else [],
        }
    trace["attempts"] = [msgspec.to_builtins(a) for a in attempts]
    if notes:
        trace["events"] = notes
    trace["decision"] = _decision(plan, attempts, dry_run)
    return trace


def _candidate(target: Target) -> dict[str, Any]:
    timeout_s = target.timeout_s
    return {
        "target": target.label,
        "route": target.route,
        "timeout_ms": round(timeout_s * 1000) if timeout_s else None,
        "retries": target.retries,
    }


def _decision(plan: Plan | None, attempts: list[Attempt], dry_run: bool) -> dict[str, Any]:
    if dry_run:
        first = plan.targets[0].label if plan is not None and plan.targets else None
        return {"target": first, "reason": "dry run: no provider was called; this target would be tried first"}
    if len(attempts) == 1 and attempts[0].status == "ok":  # the common case, decided at once
        reason = plan.reason if plan is not None and plan.reason else "first candidate answered"
        return {"target": attempts[0].target, "reason": reason}
    for attempt in reversed(attempts):
        if attempt.status in ("ok", "partial"):
            failed = sum(1 for a in attempts if a.status in ("error", "escalated"))
            skipped = sum(1 for a in attempts if a.status == "skipped")
            if attempt.status == "partial":
                reason = "the stream failed after its first byte; nothing can be retried once sent"
            elif failed:
                reason = f"answered after {failed} failed or escalated attempt{'s' if failed > 1 else ''}"
            elif skipped:
                reason = f"answered after skipping {skipped} target{'s' if skipped > 1 else ''}"
            else:
                reason = plan.reason if plan is not None and plan.reason else "first candidate answered"
            return {"target": attempt.target, "reason": reason}
    tried = [a for a in attempts if a.status != "skipped"]
    if tried:
        return {"target": None, "reason": f"every attempt failed; the last with {tried[-1].error}"}
    if attempts:
        return {"target": None, "reason": f"every target was skipped; the last: {attempts[-1].reason}"}
    return {"target": None, "reason": "no attempt was made"}
