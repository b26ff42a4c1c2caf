"""Budget admission arithmetic: never admits past the cap; the largest fit is exact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux.money.admission import admit, headroom, largest_fit

nano = st.integers(min_value=0, max_value=10**15)


def test_an_estimate_that_fits_exactly_is_admitted_and_one_more_is_not() -> None:
    assert admit(600, 300, 100, 1000)
    assert not admit(600, 300, 101, 1000)
    assert admit(10**18, 10**18, 10**18, None)  # no cap


def test_spend_past_the_cap_refuses_even_a_free_request() -> None:
    assert not admit(1001, 0, 0, 1000)


@given(cap=nano, spent=nano, held=st.lists(nano, max_size=20), estimates=st.lists(nano, max_size=60))
def test_admission_never_admits_past_the_cap(cap: int, spent: int, held: list[int], estimates: list[int]) -> None:
    """Requests arrive one by one against prior spend and reservations: the spend, the reservations and every
    admitted estimate together never pass the cap (unless the prior spend alone did, and then nothing is)."""
    reserved = sum(held)
    admitted = []
    for e in estimates:
        if admit(spent, reserved, e, cap):
            reserved += e
            admitted.append(e)
    assert spent + sum(held) + sum(admitted) <= cap or not admitted
    if spent + sum(held) > cap:
        assert not admitted


@given(cap=nano, spent=nano, reserved=nano, estimate=nano)
def test_headroom_is_the_largest_admitted_estimate(cap: int, spent: int, reserved: int, estimate: int) -> None:
    room = headroom(spent, reserved, cap)
    assert room is not None and room >= 0
    assert admit(spent, reserved, estimate, cap) == (estimate <= room and spent + reserved <= cap)
    assert headroom(spent, reserved, None) is None


@given(room=nano, fixed=nano, unit=st.integers(min_value=1, max_value=10**6))
def test_largest_fit_is_the_largest_max_tokens_that_fits(room: int, fixed: int, unit: int) -> None:
    n = largest_fit(room, fixed, unit)
    if n is None:
        assert fixed > room
    else:
        assert n >= 0 and fixed + n * unit <= room < fixed + (n + 1) * unit


def test_largest_fit_needs_a_positive_unit_price() -> None:
    with pytest.raises(ValueError):
        largest_fit(100, 0, 0)
