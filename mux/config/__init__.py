"""Gateway configuration: its shape (``schema``) and how a file or the environment becomes one (``load``)."""

from .load import check_state, config_from_env, interpolate, load_config, load_validator, parse_config, validated
from .schema import (
    CascadeConfig,
    Config,
    ConfigError,
    HealthConfig,
    ProviderConfig,
    RouteConfig,
    RouteTarget,
    ServerConfig,
)

__all__ = [
    "CascadeConfig", "Config", "ConfigError", "HealthConfig", "ProviderConfig", "RouteConfig", "RouteTarget",
    "ServerConfig", "check_state", "config_from_env", "interpolate", "load_config", "load_validator",
    "parse_config", "validated",
]
