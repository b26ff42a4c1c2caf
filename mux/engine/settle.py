"""Money per request: each attempt's usage and cost, and the request's total, kept in the outcome.

Reads the catalog's prices; writes ``Outcome.provider``, ``model``, ``usage``, ``spent`` and ``cost_usd``.
The total covers every attempt that reported usage (a cascade pays for the answers it escalated from), so
headers, ``usage.cost``, the log record and budgets all see what the request really cost.
"""

from __future__ import annotations

from mux.catalog import Catalog, cost_of
from mux.context import Outcome, Spend
from mux.routing.plan import Target
from mux.wire.openai import Usage


def answered_by(outcome: Outcome, target: Target, model: str | None) -> None:
    """Record the provider and the model that answer (the provider's own name for it, when it gave one)."""
    outcome.provider = target.provider.name
    outcome.model = model or target.model


def charge(outcome: Outcome, catalog: Catalog, target: Target, model: str | None, usage: Usage | None) -> float | None:
    """Record one attempt's usage and answer its cost (``None`` when its usage or price is unknown); the
    outcome's ``cost_usd`` becomes the total of every priced attempt so far."""
    answered_by(outcome, target, model)
    outcome.usage = usage
    if usage is None:
        return None
    price = catalog.price(target.provider, outcome.model or target.model) or catalog.price(
        target.provider, target.model
    )
    cost = cost_of(usage, price) if price is not None else None
    outcome.spent.append(Spend(target.label, usage, cost))
    if cost is not None:
        outcome.cost_usd = cost if outcome.cost_usd is None else round(outcome.cost_usd + cost, 10)
    return cost


def with_total(usage: Usage | None, outcome: Outcome) -> Usage | None:
    """Answer ``usage`` carrying the request's total cost (the figure a client sees in ``usage.cost``)."""
    if usage is not None:
        usage.cost = outcome.cost_usd
    return usage
