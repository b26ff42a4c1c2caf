"""mux: an LLM gateway built from composable ASGI layers."""

from .config import Config, ConfigError, config_from_env, load_config, parse_config
from .gateway import Gateway, build_app, check_stack, compose, stack, wrap
from .logging import configure_logging

__all__ = [
    "Config", "ConfigError", "Gateway", "build_app", "check_stack", "compose", "config_from_env",
    "configure_logging", "load_config", "parse_config", "stack", "wrap",
]
__version__ = "0.1.0"
