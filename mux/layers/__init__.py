"""The request-path layers, one module each; none imports another. Names load their module on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mux.layers.auth import AuthLayer
    from mux.layers.budget import BudgetLayer
    from mux.layers.errors import ErrorLayer
    from mux.layers.ratelimit import RateLimitLayer
    from mux.layers.router import RouterLayer
    from mux.layers.tags import TagsLayer
    from mux.layers.trace import TraceLayer

_HOMES = {
    "AuthLayer": "mux.layers.auth",
    "BudgetLayer": "mux.layers.budget",
    "ErrorLayer": "mux.layers.errors",
    "RateLimitLayer": "mux.layers.ratelimit",
    "RouterLayer": "mux.layers.router",
    "TagsLayer": "mux.layers.tags",
    "TraceLayer": "mux.layers.trace",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mux.layers' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
