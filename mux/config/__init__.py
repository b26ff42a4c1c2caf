"""Gateway configuration: its shape (``schema``) and how a file or the environment becomes one (``load``)."""

from .load import check_state, config_from_env, interpolate, load_config, load_validator, parse_config, validated
from .schema import (
    BudgetConfig,
    CascadeConfig,
    Config,
    ConfigError,
    HealthConfig,
    ProviderConfig,
    RateLimitConfig,
    RouteConfig,
    RouteTarget,
    ScopeConfig,
    ServerConfig,
)

__all__ = [
    "BudgetConfig",
    "RateLimitConfig",
    "ScopeConfig",
    "CascadeConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "ProviderConfig",
    "RouteConfig",
    "RouteTarget",
    "ServerConfig",
    "check_state",
    "config_from_env",
    "interpolate",
    "load_config",
    "load_validator",
    "parse_config",
    "validated",
]
