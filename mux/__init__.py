"""mux: an LLM gateway built from composable ASGI layers.

Importing ``mux`` is cheap: the public names below load their modules on first use, so importing one layer
(``from mux.layers.tags import TagsLayer``) does not import the whole gateway.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mux.config import Config, ConfigError, config_from_env, load_config, parse_config
    from mux.context import Context, context_of
    from mux.gateway import Gateway, build_app, check_stack, compose, stack, wrap
    from mux.logging import configure_logging
    from mux.resources import Resources

_HOMES = {
    "Config": "mux.config",
    "ConfigError": "mux.config",
    "config_from_env": "mux.config",
    "load_config": "mux.config",
    "parse_config": "mux.config",
    "Context": "mux.context",
    "context_of": "mux.context",
    "Gateway": "mux.gateway",
    "build_app": "mux.gateway",
    "check_stack": "mux.gateway",
    "compose": "mux.gateway",
    "stack": "mux.gateway",
    "wrap": "mux.gateway",
    "configure_logging": "mux.logging",
    "Resources": "mux.resources",
}

__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mux' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
