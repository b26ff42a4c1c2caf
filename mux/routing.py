"""Pure routing decisions: which provider and upstream model serve a model identifier, and the plan of
attempts for a request. No I/O; the RouterLayer and Dispatch call these.

A model identifier resolves, in this order:
1. ``provider/model`` where ``provider`` is a configured provider's name;
2. a name listed in some provider's ``models`` (first provider wins), e.g. ``meta-llama/Llama-3-8B``;
3. a bare name matching an adapter's prefixes (``gpt-`` -> openai, ``claude-`` -> anthropic, ...): the first
   configured provider of that type;
anything else is ``model_not_found``; a name whose provider type is known but not configured answers
``provider_not_configured`` with the environment variable or config that would enable it.
"""

from __future__ import annotations

from msgspec import Struct

from .config import Config, ProviderConfig
from .errors import ModelNotFound, ProviderNotConfigured
from .providers import ADAPTERS
from .wire import ChatRequest


class Target(Struct, frozen=True):
    """One attempt's destination: a configured provider and the model name it is sent."""

    provider: ProviderConfig
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Plan(Struct):
    """The ordered attempts for one request; the first to succeed answers it."""

    targets: list[Target]
    requested: str
    route: str | None = None
    route_version: int | None = None


class Resolver:
    """Resolves model identifiers against one ``Config``; answers are memoised (the config is immutable)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._cache: dict[str, Target] = {}
        self._by_name = {p.name: p for p in config.providers}

    def resolve(self, name: str) -> Target:
        """Answer the target serving ``name``; raise ``ModelNotFound`` or ``ProviderNotConfigured``."""
        target = self._cache.get(name)
        if target is None:
            target = self._resolve(name)
            if len(self._cache) < 10_000:
                self._cache[name] = target
        return target

    def _resolve(self, name: str) -> Target:
        if name.startswith("@"):
            raise ModelNotFound(f"The routing config '{name}' is not defined.", param="model")
        prefix, slash, rest = name.partition("/")
        if slash and rest and prefix in self._by_name:
            return Target(self._by_name[prefix], rest)
        for provider in self.config.providers:
            if provider.serves(name):
                return Target(provider, name)
        type_name = prefix if slash and prefix in ADAPTERS else _type_by_prefix(name)
        if type_name is not None:
            model = rest if slash and prefix == type_name else name
            for provider in self.config.providers:
                if provider.type == type_name:
                    return Target(provider, model)
            adapter = ADAPTERS[type_name]
            hint = " or ".join(adapter.env_keys)
            raise ProviderNotConfigured(
                f"The model '{name}' needs a provider of type '{type_name}', and none is configured: set {hint} "
                f"in the gateway's environment, or add a provider with type: {type_name} to its config file.",
                param="model",
            )
        raise ModelNotFound(self._unknown(name), param="model")

    def _unknown(self, name: str) -> str:
        providers = ", ".join(p.name for p in self.config.providers) or "none"
        listed = [f"{p.name}/{m}" for p in self.config.providers for m in p.models][:20]
        known = f"; listed models: {', '.join(listed)}" if listed else ""
        return (f"The model '{name}' does not exist or is not served here. Use 'provider/model' with a configured "
                f"provider ({providers}){known}.")


def _type_by_prefix(name: str) -> str | None:
    for type_name, adapter in ADAPTERS.items():
        if name.startswith(adapter.model_prefixes):
            return type_name
    return None


def plan_for(request: ChatRequest, resolver: Resolver) -> Plan:
    """Answer the plan for a request: its ``model``, then any ``models`` / ``fallbacks`` in order, without
    repeats."""
    names: list[str] = []
    if request.model is not None:
        names.append(request.model)
    for extra in (request.models, request.fallbacks):
        if extra:
            names.extend(n for n in extra if n not in names)
    targets = [resolver.resolve(n) for n in names]
    return Plan(targets=targets, requested=names[0])
