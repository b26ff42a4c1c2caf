"""Gateway configuration: typed Structs, YAML loading with ``${ENV}`` interpolation, and zero-config from env.

Unknown keys are refused, and every error names the key path (``providers[0].timeout_s``), so a typo in a
YAML file stops the gateway before it serves.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Annotated, Any, Callable, Literal, Mapping

import msgspec
from msgspec import Meta, Struct

from .catalog import ModelInfo
from .providers import ADAPTERS

PositiveSeconds = Annotated[float, Meta(gt=0)]
ProviderName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class ConfigError(Exception):
    """A configuration that cannot be served; the message names the key path and the problem."""


class ProviderConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """One upstream provider. ``name`` is the prefix in ``name/model``; ``type`` picks the adapter."""

    name: ProviderName
    type: str
    base_url: str = ""
    api_key: str | None = None
    timeout_s: PositiveSeconds = 600.0  # the whole attempt, streams included
    connect_timeout_s: PositiveSeconds = 10.0
    first_byte_timeout_s: PositiveSeconds | None = None  # until response headers; defaults to timeout_s
    idle_timeout_s: PositiveSeconds = 120.0  # longest silence between two reads of the body
    models: list[str] = []
    headers: dict[str, str] = {}  # extra upstream headers, e.g. OpenAI-Organization
    api_version: str | None = None  # Azure OpenAI's api-version query parameter
    project: str | None = None  # Vertex AI's project id
    location: str | None = None  # Vertex AI's region (default us-central1)

    def __repr__(self) -> str:
        key = "***" if self.api_key else None
        return f"ProviderConfig(name={self.name!r}, type={self.type!r}, base_url={self.base_url!r}, api_key={key})"

    def url_for(self, path: str) -> str:
        """Answer the base URL joined with ``path``."""
        return self.base_url.rstrip("/") + path

    def serves(self, model: str) -> bool:
        """Whether ``model`` is in this provider's declared model list."""
        return model in self.models


class ServerConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    max_body_mb: Annotated[float, Meta(gt=0, le=1024)] = 10.0
    access_log: bool = False
    admin_token: str | None = None  # enables /admin/* with "Authorization: Bearer <token>"
    state_path: str | None = None  # SQLite file keeping route versions across restarts (default: memory)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


# An upstream status (429, 503, ...) or a class of failure: any 5xx, a timeout, a connection failure.
RetryClass = Annotated[int, Meta(ge=400, le=599)] | Literal["5xx", "timeout", "connect"]
Strategy = Literal["single", "fallback", "weighted", "latency", "cost", "cascade", "ab_test"]
CascadeCheck = Literal["error", "refusal", "length", "invalid_json"]


class RouteTarget(Struct, kw_only=True, forbid_unknown_fields=True):
    """One target of a routing config: a model identifier (``provider/model``, a bare name or ``@route``)."""

    model: Annotated[str, Meta(min_length=1)]
    timeout_ms: Annotated[int, Meta(gt=0)] | None = None  # this attempt's whole time
    weight: Annotated[float, Meta(ge=0)] = 1.0  # weighted and ab_test
    retries: Annotated[int, Meta(ge=0, le=5)] = 0  # extra attempts at this same target


class CascadeConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """When to escalate from a cheaper target to the next: the failed checks, and an optional validator."""

    checks: list[CascadeCheck] = msgspec.field(default_factory=lambda: ["error", "refusal", "length", "invalid_json"])
    validator: str | None = None  # "module:function", called with (request, completion dict) -> bool


class RouteConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """A named, versioned routing config, used as ``"model": "@name"``."""

    strategy: Strategy = "fallback"
    targets: Annotated[list[RouteTarget], Meta(min_length=1)]
    retry_on: list[RetryClass] = msgspec.field(default_factory=lambda: [429, "5xx", "timeout", "connect"])
    total_timeout_ms: Annotated[int, Meta(gt=0)] | None = None
    sticky: Literal["end_user", "session"] | None = None  # weighted and ab_test assignment
    cascade: CascadeConfig | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=20)] | None = None


class HealthConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """Shared health: circuit breakers, rate-limit cooling, retry budget and backoff (README: "Health")."""

    breaker_failures: Annotated[int, Meta(ge=1)] = 5  # consecutive failures that open a target's breaker
    breaker_cooldown_s: PositiveSeconds = 30.0  # open time before a half-open probe
    cooldown_429_s: Annotated[float, Meta(ge=0)] = 1.0  # a 429 without Retry-After cools its target this long
    cooldown_429_max_s: Annotated[float, Meta(ge=0)] = 60.0  # the longest a Retry-After cools a target
    retry_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.2  # retries allowed per recent request
    retry_floor_per_s: Annotated[float, Meta(ge=0)] = 2.0  # retries always allowed per second
    backoff_base_ms: Annotated[int, Meta(ge=0)] = 50
    backoff_max_ms: Annotated[int, Meta(ge=0)] = 2000
    latency_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.3  # EWMA weight of the newest latency


class Config(Struct, kw_only=True, forbid_unknown_fields=True):
    providers: list[ProviderConfig] = []
    catalog: dict[str, ModelInfo] = {}  # "<provider name or type>/<model>": limits, abilities, prices
    routes: dict[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+$")], RouteConfig] = {}
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)

    def provider(self, name: str) -> ProviderConfig | None:
        """Answer the provider called ``name``, if configured."""
        for provider in self.providers:
            if provider.name == name:
                return provider
        return None


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
    return config


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
                raise ConfigError(f"routes.{name}.cascade.validator: cannot load "
                                  f"'{route.cascade.validator}': {exc}") from None
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
        return path[path.index(name):] + [name]
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
