"""Money as integer nano-USD (1 USD = 10**9), so sums of reservations and charges are exact.

``to_nano`` rounds up by default: a reservation or a charge is never smaller than its float price. A cap is
converted rounding down (``up=False``), so rounding can only make admission stricter, never looser.
"""

from __future__ import annotations

import math

NANO_PER_USD = 1_000_000_000


def to_nano(usd: float, *, up: bool = True) -> int:
    """Answer ``usd`` in nano-USD, rounded up (or down with ``up=False``).

    A value within float noise of a whole nano-USD (``0.3 * 1e9`` is ``300000000.00000006``) counts as that
    whole value, so a decimal price is not pushed one nano-USD higher by its binary representation.
    """
    x = usd * NANO_PER_USD
    n = round(x)  # the nearest whole (a tie either way: it is not near)
    if abs(x - n) <= 1e-6 + abs(x) * 1e-15:
        return n
    return math.ceil(x) if up else math.floor(x)


def to_usd(nano: int) -> float:
    """Answer ``nano`` nano-USD in USD."""
    return nano / NANO_PER_USD
