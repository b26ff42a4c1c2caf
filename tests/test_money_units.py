"""Money as integer nano-USD: conversions round the safe way and sums are exact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mux.money.units import NANO_PER_USD, to_nano, to_usd


def test_decimal_prices_convert_without_float_noise() -> None:
    assert to_nano(0.3) == 300_000_000  # 0.3 * 1e9 is 300000000.00000006 in floats
    assert to_nano(0.1) == 100_000_000
    assert to_nano(1e-9) == 1
    assert to_nano(0.15e-6 * 1000) == 150_000  # 1000 tokens at $0.15 per million
    assert to_nano(0) == 0


def test_a_fraction_of_a_nano_usd_rounds_up_for_a_charge_and_down_for_a_cap() -> None:
    assert to_nano(0.0375e-6) == 38  # 37.5 nano-USD: a reservation is never smaller than the price
    assert to_nano(0.0375e-6, up=False) == 37  # a cap is never larger than configured
    assert to_nano(2.5e-10) == 1 and to_nano(2.5e-10, up=False) == 0


def test_ten_dimes_are_exactly_one_dollar() -> None:
    assert sum(to_nano(0.1) for _ in range(10)) == to_nano(1.0) == NANO_PER_USD
    assert sum(0.1 for _ in range(10)) != 1.0  # what the integers avoid


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_a_charge_is_never_below_its_price_and_a_cap_never_above(usd: float) -> None:
    x = usd * NANO_PER_USD
    noise = 1e-6 + x * 1e-15  # what to_nano treats as float noise around a whole nano-USD
    up, down = to_nano(usd), to_nano(usd, up=False)
    assert down <= up <= down + 1
    assert up >= x - noise and down <= x + noise


def test_to_usd_answers_dollars() -> None:
    assert to_usd(1_500_000_000) == 1.5
    assert to_usd(1) == 1e-9
