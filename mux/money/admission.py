"""Budget admission arithmetic on integer nano-USD, pure.

A request is admitted against a cap when what is already spent, what other requests hold in reservations and
this request's worst-case estimate together fit the cap. The stores apply ``admit`` to every window of a
request inside one atomic step, so the sum of admitted estimates never passes the cap.
"""

from __future__ import annotations


def admit(spent: int, reserved: int, estimate: int, cap: int | None) -> bool:
    """Answer whether ``estimate`` fits beside ``spent`` and ``reserved`` under ``cap`` (None: unlimited)."""
    return cap is None or spent + reserved + estimate <= cap


def headroom(spent: int, reserved: int, cap: int | None) -> int | None:
    """Answer the largest estimate ``admit`` would accept now (0 when none), or None when unlimited."""
    if cap is None:
        return None
    return max(0, cap - spent - reserved)


def largest_fit(room: int, fixed: int, unit: int) -> int | None:
    """Answer the largest ``n`` with ``fixed + n * unit <= room``, or None when even ``n = 0`` does not fit.

    For the refusal message "the largest max_tokens that would fit": ``room`` is the smallest headroom over the
    request's windows, ``fixed`` the prompt's cost and ``unit`` the price of one output token, both in nano-USD
    (``unit`` must be positive).
    """
    if unit <= 0:
        raise ValueError("largest_fit needs a positive unit price")
    if fixed > room:
        return None
    return (room - fixed) // unit
