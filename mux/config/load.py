"""Reading a configuration: YAML with ``${ENV}`` interpolation, zero-config from the environment, and the
checks a Struct cannot express (provider types, names, base URLs, routes, keys, the state URL). Every error
names the key path (``providers[0].timeout_s``, ``keys[1].key``).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from mux.config.schema import Config, ConfigError, ProviderConfig, RouteConfig
from mux.keys.spec import check_specs
from mux.providers import ADAPTERS
from mux.stores.state_url import MemoryState, parse_state_url

_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Answer ``value`` with ``${VAR}`` and ``${VAR:-default}`` replaced in every string, recursively.

    Raises ``ConfigError`` naming the key path when a variable without a default is unset."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group("name"), match.group("default")
            if name in environ and (environ[name] or default is None):
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '$'}: environment variable {name} is not set")

        return _ENV_RE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def parse_config(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    """Answer the ``Config`` for already-parsed YAML/JSON data; raise ``ConfigError`` naming the bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("$: the configuration must be a mapping")
    data = interpolate(data, os.environ if environ is None else environ)
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return validated(config)


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read a YAML file into a ``Config``; raise ``ConfigError`` for unreadable files or bad content."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, environ)


def config_from_env(environ: Mapping[str, str] | None = None) -> Config:
    """Zero-config: one provider per adapter whose API key is in the environment, at its real base URL.

    ``<TYPE>_BASE_URL`` (e.g. ``OPENAI_BASE_URL``) overrides the base URL."""
    environ = os.environ if environ is None else environ
    providers = []
    for type_name, adapter in ADAPTERS.items():
        key = next((environ[k] for k in adapter.env_keys if environ.get(k)), None)
        base_url = environ.get(f"{type_name.upper()}_BASE_URL") or adapter.default_base_url
        if key is None or not base_url:
            continue
        providers.append(ProviderConfig(name=type_name, type=type_name, base_url=base_url, api_key=key))
    return validated(Config(providers=providers))


def validated(config: Config) -> Config:
    """Answer ``config`` after the checks a Struct cannot express (types, names, base URLs, routes), with
    provider base URLs defaulted; raise ``ConfigError`` naming the key."""
    seen: set[str] = set()
    for index, provider in enumerate(config.providers):
        where = f"providers[{index}]"
        if provider.type not in ADAPTERS:
            known = ", ".join(sorted(ADAPTERS))
            raise ConfigError(f"{where}.type: unknown provider type '{provider.type}' (known: {known})")
        if provider.name in seen:
            raise ConfigError(f"{where}.name: provider name '{provider.name}' is used twice")
        seen.add(provider.name)
        if not provider.base_url:
            provider.base_url = ADAPTERS[provider.type].default_base_url
        if not provider.base_url:
            raise ConfigError(f"{where}.base_url: required for a provider of type '{provider.type}'")
        if not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: must start with http:// or https://")
    _check_routes(config)
    try:
        check_specs(config.keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_state(config, config.server.workers)
    _check_budgets_and_limits(config)
    return config


def check_state(config: Config, workers: int) -> None:
    """Raise ``ConfigError`` when ``state`` is not ``memory``, ``sqlite:///path`` or ``redis://host:port/db``
    (``mux.stores.state_url``), or is ``memory`` while ``workers`` processes would each hold their own copy."""
    try:
        state = parse_state_url(config.state)
    except ValueError as exc:
        raise ConfigError(f"state: {exc}") from None
    if isinstance(state, MemoryState) and workers > 1:
        raise ConfigError(
            f"state: 'memory' keeps keys (and budgets and rate limits) in one process's memory, so each of "
            f"the {workers} workers would have its own: a key revoked or a budget spent in one would not "
            "count in the others. Use sqlite:///path (the workers of one machine) or redis://host:port/db."
        )


# ---- budgets, rate limits and their state ----------------------------------------------------------------


def _check_budgets_and_limits(config: Config) -> None:
    """Refuse repeated budget or rate-limit names, a downgrade without a known ``@route``
    to serve through, ``to`` on another action, and a rate limit with neither ``rpm`` nor ``tpm``."""
    names: set[str] = set()
    for index, budget in enumerate(config.budgets):
        where = f"budgets[{index}]"
        if budget.name in names:
            raise ConfigError(f"{where}.name: budget name '{budget.name}' is used twice")
        names.add(budget.name)
        if budget.action == "downgrade":
            if not budget.to:
                raise ConfigError(f"{where}.to: action 'downgrade' needs the route to serve through, e.g. '@cheap'")
            if not budget.to.startswith("@") or budget.to[1:] not in config.routes:
                known = ", ".join("@" + r for r in config.routes) or "none"
                raise ConfigError(f"{where}.to: no route named '{budget.to}' (routes: {known})")
        elif budget.to is not None:
            raise ConfigError(f"{where}.to: only for action 'downgrade'")
    names = set()
    for index, limit in enumerate(config.rate_limits):
        where = f"rate_limits[{index}]"
        if limit.name in names:
            raise ConfigError(f"{where}.name: rate limit name '{limit.name}' is used twice")
        names.add(limit.name)
        if limit.rpm is None and limit.tpm is None:
            raise ConfigError(f"{where}: set rpm, tpm or both")


def _check_routes(config: Config) -> None:
    """Refuse routes that name unknown routes, form cycles, or misuse a strategy."""
    for name, route in config.routes.items():
        for index, target in enumerate(route.targets):
            if target.model.startswith("@") and target.model[1:] not in config.routes:
                raise ConfigError(f"routes.{name}.targets[{index}].model: no route named '{target.model}'")
        if route.strategy == "single" and len(route.targets) != 1:
            raise ConfigError(f"routes.{name}.targets: strategy 'single' takes exactly one target")
        if route.strategy == "ab_test" and not all(t.model.startswith("@") for t in route.targets):
            raise ConfigError(f"routes.{name}.targets: strategy 'ab_test' splits across routes ('@name' targets)")
        if route.strategy in ("weighted", "ab_test") and not any(t.weight > 0 for t in route.targets):
            raise ConfigError(f"routes.{name}.targets: at least one weight must be positive")
        if route.cascade and route.strategy != "cascade":
            raise ConfigError(f"routes.{name}.cascade: only for strategy 'cascade'")
        if route.cascade and route.cascade.validator:
            try:
                load_validator(route.cascade.validator)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ConfigError(
                    f"routes.{name}.cascade.validator: cannot load '{route.cascade.validator}': {exc}"
                ) from None
    for name in config.routes:
        cycle = _cycle_from(name, config.routes, [])
        if cycle:
            raise ConfigError(f"routes.{name}: routes form a cycle: {' -> '.join('@' + n for n in cycle)}")


def load_validator(path: str) -> Callable[..., bool]:
    """Import a cascade validator named ``module:function``; raise ``ValueError``, ``ImportError`` or
    ``AttributeError`` when it cannot be had."""
    module, colon, name = path.partition(":")
    if not colon or not module or not name:
        raise ValueError("expected 'module:function'")
    validator = getattr(importlib.import_module(module), name)
    if not callable(validator):
        raise ValueError(f"'{path}' is not callable")
    return validator


def _cycle_from(name: str, routes: dict[str, RouteConfig], path: list[str]) -> list[str] | None:
    if name in path:
        return path[path.index(name) :] + [name]
    for target in routes[name].targets:
        if target.model.startswith("@"):
            cycle = _cycle_from(target.model[1:], routes, path + [name])
            if cycle:
                return cycle
    return None


_PATH_RE = re.compile(r"^(?P<detail>.*) - at `\$(?P<path>[^`]*)`$", re.S)


def _describe(exc: msgspec.ValidationError) -> str:
    match = _PATH_RE.match(str(exc))
    if not match:
        return str(exc)
    return f"{match.group('path').lstrip('.') or '$'}: {match.group('detail')}"
