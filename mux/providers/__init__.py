"""The provider registry: adapter type name -> adapter. Adding a provider is one module and one line here."""

from __future__ import annotations

from mux.providers.anthropic import ADAPTER as _anthropic
from mux.providers.base import Adapter, Call, Completion, StreamTranslator, UpstreamRequest
from mux.providers.compatible import ADAPTERS as _compatible
from mux.providers.gemini import ADAPTER as _gemini
from mux.providers.gemini import VERTEX as _vertex
from mux.providers.openai import ADAPTER as _openai

ADAPTERS: dict[str, Adapter] = {
    _openai.type_name: _openai,
    _gemini.type_name: _gemini,
    _vertex.type_name: _vertex,
    _anthropic.type_name: _anthropic,
    **{adapter.type_name: adapter for adapter in _compatible},
}

__all__ = ["ADAPTERS", "Adapter", "Call", "Completion", "StreamTranslator", "UpstreamRequest"]
