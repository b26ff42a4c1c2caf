"""The model catalog: what each model can do, its limits and its price, overridable in the config.

Built-in entries are keyed ``<provider type>/<model>`` and hold the providers' documented figures (context
window and maximum output in tokens; tools, vision, json_schema and reasoning support; ``reasoning_model`` for the
models that take OpenAI's reasoning-model parameters). Prices come from
``mux.pricing.PRICES``. A config's ``catalog:`` entries, keyed ``<provider name>/<model>`` (or by type), add
models or override any field; unknown fields are refused. Dated snapshots (``gpt-4o-2024-08-06``) fall back
to their base name. An unknown model has no entry: it is neither priced nor filtered out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from msgspec import Meta, Struct, structs

from mux.catalog.prices import PRICES, Price

if TYPE_CHECKING:
    from mux.config.schema import ProviderConfig

NonNegative = Annotated[float, Meta(ge=0)]


class ModelInfo(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model's limits, abilities and price (USD per million tokens); ``None`` is unknown."""

    context_window: Annotated[int, Meta(gt=0)] | None = None
    max_output: Annotated[int, Meta(gt=0)] | None = None
    tools: bool | None = None
    vision: bool | None = None
    json_schema: bool | None = None
    reasoning: bool | None = None
    # An OpenAI-style reasoning model (o-series, gpt-5): its API refuses ``max_tokens`` (it takes
    # ``max_completion_tokens``) and any temperature or top_p but the default 1. The OpenAI-dialect adapters
    # translate for it; ``reasoning`` alone (a model that can reason) changes no parameter.
    reasoning_model: bool | None = None
    input: NonNegative | None = None
    output: NonNegative | None = None
    cached_input: NonNegative | None = None
    cache_write: NonNegative | None = None

    @property
    def price(self) -> Price | None:
        if self.input is None or self.output is None:
            return None
        return Price(self.input, self.output, self.cached_input, self.cache_write)


def _info(
    context: int,
    output: int,
    *,
    tools: bool = True,
    vision: bool = True,
    json_schema: bool = True,
    reasoning: bool = False,
    reasoning_model: bool | None = None,
) -> ModelInfo:
    return ModelInfo(
        context_window=context,
        max_output=output,
        tools=tools,
        vision=vision,
        json_schema=json_schema,
        reasoning=reasoning,
        reasoning_model=reasoning_model,
    )


def _openai_reasoning(context: int, output: int, *, vision: bool = True) -> ModelInfo:
    return _info(context, output, vision=vision, reasoning=True, reasoning_model=True)


# The providers' model pages: OpenAI "Models", Anthropic "Models overview", Google "Gemini models".
# json_schema for Anthropic and Gemini means mux's structured-output translation serves it.
CAPABILITIES: dict[str, ModelInfo] = {
    "openai/gpt-4o": _info(128_000, 16_384),
    "openai/gpt-4o-mini": _info(128_000, 16_384),
    "openai/gpt-4.1": _info(1_047_576, 32_768),
    "openai/gpt-4.1-mini": _info(1_047_576, 32_768),
    "openai/gpt-4.1-nano": _info(1_047_576, 32_768),
    "openai/gpt-5": _openai_reasoning(400_000, 128_000),
    "openai/gpt-5-mini": _openai_reasoning(400_000, 128_000),
    "openai/gpt-5-nano": _openai_reasoning(400_000, 128_000),
    "openai/o1": _openai_reasoning(200_000, 100_000),
    "openai/o3": _openai_reasoning(200_000, 100_000),
    "openai/o3-mini": _openai_reasoning(200_000, 100_000, vision=False),
    "openai/o4-mini": _openai_reasoning(200_000, 100_000),
    "anthropic/claude-opus-4-5": _info(200_000, 64_000, reasoning=True),
    "anthropic/claude-opus-4-1": _info(200_000, 32_000, reasoning=True),
    "anthropic/claude-opus-4": _info(200_000, 32_000, reasoning=True),
    "anthropic/claude-sonnet-4-5": _info(200_000, 64_000, reasoning=True),
    "anthropic/claude-sonnet-4": _info(200_000, 64_000, reasoning=True),
    "anthropic/claude-3-7-sonnet": _info(200_000, 64_000, reasoning=True),
    "anthropic/claude-haiku-4-5": _info(200_000, 64_000, reasoning=True),
    "anthropic/claude-3-5-haiku": _info(200_000, 8_192),
    "anthropic/claude-3-haiku": _info(200_000, 4_096),
    "gemini/gemini-2.5-pro": _info(1_048_576, 65_536, reasoning=True),
    "gemini/gemini-2.5-flash": _info(1_048_576, 65_536, reasoning=True),
    "gemini/gemini-2.5-flash-lite": _info(1_048_576, 65_536, reasoning=True),
    "gemini/gemini-2.0-flash": _info(1_048_576, 8_192),
    "gemini/gemini-2.0-flash-lite": _info(1_048_576, 8_192),
}

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$|-\d{8}$|-\d{3}$|-latest$")
_UNSEEN = object()


class Catalog:
    """Answers a model's ``ModelInfo``: config overrides first, then built-in capabilities and prices."""

    def __init__(
        self,
        overrides: dict[str, ModelInfo] | None = None,
        *,
        capabilities: dict[str, ModelInfo] = CAPABILITIES,
        prices: dict[str, Price] = PRICES,
    ) -> None:
        self.overrides = overrides or {}
        self.capabilities = capabilities
        self.prices = prices
        self._memo: dict[tuple[str, str, str], ModelInfo | None] = {}
        self._prices: dict[tuple[str, str, str], Price | None] = {}

    def info(self, provider: ProviderConfig, model: str) -> ModelInfo | None:
        key = (provider.name, provider.type, model)
        found = self._memo.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        info = self._lookup(provider, model)
        if len(self._memo) < 10_000:
            self._memo[key] = info
        return info

    def price(self, provider: ProviderConfig, model: str) -> Price | None:
        key = (provider.name, provider.type, model)
        found = self._prices.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        info = self.info(provider, model)
        price = info.price if info is not None else None
        if len(self._prices) < 10_000:
            self._prices[key] = price
        return price

    def _lookup(self, provider: ProviderConfig, model: str) -> ModelInfo | None:
        base = _SNAPSHOT.sub("", model)
        names = [model, base] if base != model else [model]
        builtin = None
        for name in names:
            key = f"{provider.type}/{name}"
            capability, price = self.capabilities.get(key), self.prices.get(key)
            if capability is not None or price is not None:
                builtin = capability or ModelInfo()
                if price is not None:
                    builtin = structs.replace(
                        builtin,
                        input=price.input,
                        output=price.output,
                        cached_input=price.cached_input,
                        cache_write=price.cache_write,
                    )
                break
        override = None
        for name in names:
            override = self.overrides.get(f"{provider.name}/{name}") or self.overrides.get(f"{provider.type}/{name}")
            if override is not None:
                break
        if override is None:
            return builtin
        if builtin is None:
            return override
        changed = {f: getattr(override, f) for f in override.__struct_fields__ if getattr(override, f) is not None}
        return structs.replace(builtin, **changed)


BUILTIN = Catalog()
"""The built-in entries alone, for code that has no router's catalog at hand."""
