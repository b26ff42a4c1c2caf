"""Calendar budget periods in UTC: day, ISO week from Monday, month, total."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux.money.periods import PERIODS, check_period, window


def ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_a_day_runs_from_midnight_to_midnight_utc() -> None:
    assert window("day", ts(2027, 3, 10, 23, 59, 59) + 0.9) == (ts(2027, 3, 10), ts(2027, 3, 11))
    assert window("day", ts(2027, 3, 11)) == (ts(2027, 3, 11), ts(2027, 3, 12))  # midnight opens the new day


def test_a_week_starts_on_monday() -> None:
    monday = ts(2027, 3, 8)
    assert window("week", ts(2027, 3, 14, 23, 59)) == (monday, ts(2027, 3, 15))  # Sunday: still this week
    assert window("week", monday) == (monday, ts(2027, 3, 15))
    assert window("week", ts(2027, 1, 1)) == (ts(2026, 12, 28), ts(2027, 1, 4))  # ISO week across a year


def test_a_month_is_a_calendar_month() -> None:
    assert window("month", ts(2028, 2, 29, 12)) == (ts(2028, 2, 1), ts(2028, 3, 1))  # leap year
    assert window("month", ts(2027, 12, 31, 23)) == (ts(2027, 12, 1), ts(2028, 1, 1))
    assert window("month", ts(2027, 4, 1)) == (ts(2027, 4, 1), ts(2027, 5, 1))


def test_total_never_resets() -> None:
    assert window("total", ts(2027, 3, 10)) == (0, None)


def test_an_unknown_period_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="day, week, month, total"):
        check_period("year")
    with pytest.raises(ValueError, match="year"):
        window("year", 0)


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)), st.sampled_from(PERIODS[:3]))
def test_every_period_holds_now_and_starts_at_midnight(moment: datetime, period: str) -> None:
    now = moment.replace(tzinfo=UTC).timestamp()
    start, resets = window(period, now)
    assert resets is not None and start <= now < resets
    first = datetime.fromtimestamp(start, UTC)
    end = datetime.fromtimestamp(resets, UTC)
    assert first.time() == end.time() == datetime.min.time()
    if period == "day":
        assert end - first == timedelta(days=1)
    elif period == "week":
        assert first.isoweekday() == 1 and end - first == timedelta(days=7)
    else:
        assert first.day == end.day == 1 and 28 <= (end - first).days <= 31
