"""Gateway configuration: typed Structs, YAML loading with ``${ENV}`` interpolation, and zero-config from env.

Unknown keys are refused, and every error names the key path (``providers[0].timeout_s``), so a typo in a
YAML file stops the gateway before it serves.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Mapping

import msgspec
from msgspec import Meta, Struct

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

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class Config(Struct, kw_only=True, forbid_unknown_fields=True):
    providers: list[ProviderConfig] = []
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
    return _checked(config)


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
    return _checked(Config(providers=providers))


def _checked(config: Config) -> Config:
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
    return config


_PATH_RE = re.compile(r"^(?P<detail>.*) - at `\$(?P<path>[^`]*)`$", re.S)


def _describe(exc: msgspec.ValidationError) -> str:
    match = _PATH_RE.match(str(exc))
    if not match:
        return str(exc)
    return f"{match.group('path').lstrip('.') or '$'}: {match.group('detail')}"
