"""The provider registry: adapter type name -> adapter. Adding a provider is one module and one line here."""

from __future__ import annotations

from .base import Adapter, Call, Completion, StreamTranslator, UpstreamRequest
from .compatible import ADAPTERS as _compatible
from .openai import ADAPTER as _openai

ADAPTERS: dict[str, Adapter] = {
    _openai.type_name: _openai,
    **{adapter.type_name: adapter for adapter in _compatible},
}

__all__ = ["ADAPTERS", "Adapter", "Call", "Completion", "StreamTranslator", "UpstreamRequest"]
