"""GCRA for "N per minute": no 2x burst at a window boundary, exact remaining / reset / retry-after answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mux.money.gcra import NEVER, WINDOW_US, adjust, decide, level_now, take

limits = st.integers(min_value=1, max_value=10_000)


def run(limit: int, events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Feed ``(µs since the previous call, cost)`` events to one bucket; answer the admitted ``(time, cost)``."""
    level, at, now, admitted = 0, 0, 0, []
    for dt, cost in events:
        now += dt
        v = take(level_now(level, at, now, limit), cost, limit)
        if v.admitted:
            level, at = v.level, now
            admitted.append((now, cost))
    return admitted


@settings(max_examples=300)
@given(limit=limits, data=st.data())
def test_admitted_cost_over_any_interval_is_at_most_the_burst_plus_the_rate(limit: int, data: st.DataObject) -> None:
    """Over any interval of d µs, admitted cost <= burst + d * limit / 60 s: at most limit + burst over any 60 s,
    and about the burst alone over a moment (a fixed window would admit 2 x limit across its boundary)."""
    gaps = st.one_of(st.just(0), st.integers(0, 3 * WINDOW_US // limit + 1_000_000))  # bursts and spreads
    events = data.draw(st.lists(st.tuples(gaps, st.integers(0, limit + 1)), max_size=80))
    admitted = run(limit, events)
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            span = admitted[j][0] - admitted[i][0]
            assert total * WINDOW_US <= limit * WINDOW_US + span * limit
            if span < WINDOW_US:
                assert total <= 2 * limit


def test_a_fixed_window_boundary_admits_no_second_burst() -> None:
    limit = 10
    admitted = run(limit, [(59_900_000, 1)] * 1 + [(0, 1)] * 14 + [(200_000, 1)] + [(0, 1)] * 14)
    assert len(admitted) == limit  # ten at 59.9 s, none at 60.1 s (a fixed window would admit ten more)


def test_a_steady_rate_after_the_burst_is_admitted_one_per_interval() -> None:
    limit = 60  # one per second
    burst = [(0, 1)] * 61
    assert len(run(limit, burst)) == 60
    steady = burst + [(1_000_000, 1), (0, 1)] * 30
    assert len(run(limit, steady)) == 60 + 30


@settings(max_examples=300)
@given(limit=limits, level_units=st.integers(0, 20_000), cost=st.integers(0, 10_000))
def test_remaining_reset_and_retry_after_are_exact(limit: int, level_units: int, cost: int) -> None:
    level = min(level_units * WINDOW_US // 10, limit * WINDOW_US + 5 * WINDOW_US)  # may hold debt
    v = take(level, cost, limit)
    after = v.level if v.admitted else level
    assert v.level == (level + cost * WINDOW_US if v.admitted else level)
    # remaining: exactly that many more units fit now (none while in debt), one more does not
    assert take(after, v.remaining, limit).admitted == (after <= limit * WINDOW_US)
    assert not take(after, v.remaining + 1, limit).admitted
    # reset: the bucket is empty exactly then
    assert level_now(after, 0, v.reset_us, limit) == 0
    assert v.reset_us == 0 or level_now(after, 0, v.reset_us - 1, limit) > 0
    # retry-after: the cost fits exactly then, not a µs earlier; never when larger than the burst
    if v.admitted:
        assert v.retry_after_us == 0
    elif cost > limit:
        assert v.retry_after_us == NEVER
    else:
        assert take(level_now(level, 0, v.retry_after_us, limit), cost, limit).admitted
        assert not take(level_now(level, 0, v.retry_after_us - 1, limit), cost, limit).admitted


@given(limit=limits, level=st.integers(0, 10**12), cost=st.integers(0, 10_000), delta=st.integers(-20_000, 20_000))
def test_a_correction_refunds_down_to_empty_and_adds_debt(limit: int, level: int, cost: int, delta: int) -> None:
    corrected = adjust(level, delta)
    assert corrected == max(0, level + delta * WINDOW_US)
    v = take(level, cost, limit)
    if v.admitted:
        assert adjust(v.level, -cost) == level  # refunding the whole estimate at once restores the bucket


def test_a_positive_correction_is_debt_the_next_request_waits_for() -> None:
    level = take(0, 10, 100).level
    level = adjust(level, 90)  # the real usage was 100 tokens, the whole limit
    v = take(level, 1, 100)
    assert not v.admitted and v.retry_after_us == WINDOW_US // 100  # one token's worth: 0.6 s


def test_a_cost_larger_than_the_limit_never_fits() -> None:
    v = take(0, 101, 100)
    assert not v.admitted and v.retry_after_us == NEVER and v.remaining == 100


def test_both_limits_take_only_when_both_admit() -> None:
    r_level = take(0, 1, 10).level
    admitted, r, t = decide(r_level, 0, 10, 100, 150)
    assert not admitted
    assert r is not None and r.admitted and r.remaining == 9 and r.level == r_level  # unconsumed
    assert t is not None and not t.admitted and t.retry_after_us == NEVER
    admitted, r, t = decide(r_level, 0, 10, 100, 40)
    assert admitted and r is not None and r.remaining == 8 and t is not None and t.remaining == 60
    assert decide(0, 0, None, None, 5) == (True, None, None)
