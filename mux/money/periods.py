"""Calendar budget periods in UTC: ``day``, ``week`` (ISO: from Monday 00:00), ``month`` and ``total``.

``window(period, now)`` answers the period holding ``now`` as ``(start, resets_at)`` in whole epoch seconds;
``resets_at`` is ``None`` for ``total``, which starts at 0 and never resets. POSIX epoch seconds have no leap
seconds, so a UTC day is exactly 86400 of them.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache

PERIODS = ("day", "week", "month", "total")
DAY = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def check_period(period: str) -> str:
    """Answer ``period`` if it is one of ``PERIODS``; raise ValueError naming the choices otherwise."""
    if period not in PERIODS:
        raise ValueError(f"unknown budget period {period!r}: expected one of {', '.join(PERIODS)}")
    return period


def window(period: str, now: float) -> tuple[int, int | None]:
    """Answer ``(start, resets_at)`` of the ``period`` that holds the epoch time ``now``."""
    days = int(now // DAY)
    if period == "day":
        return days * DAY, (days + 1) * DAY
    if period == "week":
        monday = days - (days + 3) % 7  # 1970-01-01 was a Thursday (ISO weekday index 3)
        return monday * DAY, (monday + 7) * DAY
    if period == "month":
        return _month(days)
    if period == "total":
        return 0, None
    check_period(period)
    raise AssertionError("unreachable")


@lru_cache(maxsize=64)
def _month(days: int) -> tuple[int, int]:
    d = date.fromordinal(_EPOCH_ORDINAL + days)
    first = date(d.year, d.month, 1)
    following = date(d.year + 1, 1, 1) if d.month == 12 else date(d.year, d.month + 1, 1)
    return (first.toordinal() - _EPOCH_ORDINAL) * DAY, (following.toordinal() - _EPOCH_ORDINAL) * DAY
