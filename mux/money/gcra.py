"""GCRA (generic cell rate algorithm) for "N per minute" limits, pure and in exact integers.

A limit of ``limit`` per minute admits a burst of up to ``burst`` (default: the limit itself) at once and then
``limit`` per 60 s, evenly: over any interval of ``d`` µs the admitted cost is at most
``burst + d * limit / 60e6`` — at most ``limit + burst`` over any 60 s, and never the 2x of a fixed window
within a moment at its boundary. Each request has a cost (1 for requests, the token estimate for tokens) and
may be corrected afterwards by a token delta (``adjust``: negative refunds, positive adds debt).

State: GCRA's theoretical arrival time (TAT) kept as ``(level, at_us)`` with ``TAT = at_us + level / limit``.
``level`` counts cost in units of ``WINDOW_US`` (one unit of cost is 60e6 level units; the bucket drains
``limit`` level units per µs), so every step is integer arithmetic — in Python and in the Redis Lua script,
whose doubles hold integers exactly up to 2**53 (a limit up to ~10**8 per minute).
"""

from __future__ import annotations

from typing import NamedTuple

WINDOW_US = 60_000_000
NEVER = -1  # retry_after_us of a cost larger than the burst: it never fits


class Verdict(NamedTuple):
    """One limit's answer. ``level`` is the state to store when the whole request is admitted."""

    admitted: bool
    level: int
    remaining: int  # cost that would still be admitted now, after this call
    reset_us: int  # until the bucket is back to its initial (empty) state
    retry_after_us: int  # 0 when admitted; else until this cost fits; NEVER when it cannot


def level_now(level: int, at_us: int, now_us: int, limit: int) -> int:
    """Answer the bucket ``level`` stored at ``at_us``, drained up to ``now_us`` (a clock behind drains nothing)."""
    elapsed = now_us - at_us
    if elapsed <= 0:
        return level
    return max(0, level - elapsed * limit)


def take(level: int, cost: int, limit: int, burst: int | None = None) -> Verdict:
    """Answer whether ``cost`` fits a bucket at ``level`` (already drained to now) under ``limit`` per minute."""
    capacity = (limit if burst is None else burst) * WINDOW_US
    want = level + cost * WINDOW_US
    if want <= capacity:
        return Verdict(True, want, (capacity - want) // WINDOW_US, -(-want // limit), 0)
    retry = NEVER if cost * WINDOW_US > capacity else -(-(want - capacity) // limit)
    return Verdict(False, level, max(0, (capacity - level) // WINDOW_US), -(-level // limit), retry)


def adjust(level: int, delta: int) -> int:
    """Answer the ``level`` (drained to now) corrected by ``delta`` cost: a refund never goes below empty."""
    return max(0, level + delta * WINDOW_US)


def decide(
    requests_level: int, tokens_level: int, rpm: int | None, tpm: int | None, tokens: int, requests: int = 1
) -> tuple[bool, Verdict | None, Verdict | None]:
    """Answer ``(admitted, requests verdict, tokens verdict)`` for ``requests`` requests (one by default) of
    ``tokens`` in all against both limits.

    Admitted only if every configured limit admits; a limit that is None is not checked and answers None.
    Each verdict's ``admitted`` says whether that limit alone admits; when the request is refused, a limit that
    would have fitted reports its unconsumed state (admitted, retry 0), and nothing is to be stored.
    """
    r = take(requests_level, requests, rpm) if rpm is not None else None
    t = take(tokens_level, tokens, tpm) if tpm is not None else None
    admitted = (r is None or r.admitted) and (t is None or t.admitted)
    if not admitted:
        if r is not None and r.admitted:
            r = take(requests_level, 0, rpm)  # type: ignore[arg-type]
        if t is not None and t.admitted:
            t = take(tokens_level, 0, tpm)  # type: ignore[arg-type]
    return admitted, r, t
