"""Model resolution and the default plan (pure functions) and the RouterLayer around a scripted app."""

from __future__ import annotations

import msgspec
import pytest

from mux.config import parse_config
from mux.errors import ModelNotFound, ProviderNotConfigured
from mux.layers import RouterLayer
from mux.routing.live import LiveRouting
from mux.routing.plan import Resolver, plan_for
from mux.wire import decode_request

from .asgi_calls import ScriptedApp, call

CONFIG = parse_config(
    {
        "providers": [
            {"name": "openai", "type": "openai", "api_key": "k"},
            {
                "name": "local",
                "type": "openai",
                "base_url": "http://127.0.0.1:8000/v1",
                "models": ["meta-llama/Llama-3-8B"],
            },
        ]
    }
)


@pytest.mark.parametrize(
    ("name", "provider", "model"),
    [
        ("openai/gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("local/qwen", "local", "qwen"),
        ("meta-llama/Llama-3-8B", "local", "meta-llama/Llama-3-8B"),
        ("gpt-4o", "openai", "gpt-4o"),
        ("o3-mini", "openai", "o3-mini"),
        ("chatgpt-4o-latest", "openai", "chatgpt-4o-latest"),
    ],
)
def test_model_identifiers_resolve_to_provider_and_upstream_model(name, provider, model):
    target = Resolver(CONFIG).resolve(name)
    assert (target.provider.name, target.model) == (provider, model)


def test_unknown_names_and_routes_are_model_not_found():
    resolver = Resolver(CONFIG)
    for name in ("mystery-model", "@production", "nobody/model"):
        with pytest.raises(ModelNotFound):
            resolver.resolve(name)


def test_provider_type_known_but_unconfigured_explains_the_setting():
    with pytest.raises(ProviderNotConfigured, match="OPENAI_API_KEY"):
        Resolver(parse_config({})).resolve("gpt-4o")


def test_plan_tries_model_then_models_then_fallbacks_without_repeats():
    view, _ = decode_request(
        msgspec.json.encode(
            {
                "model": "gpt-4o",
                "models": ["gpt-4o", "local/a"],
                "fallbacks": ["local/a", "openai/gpt-4o-mini"],
                "messages": [{"role": "user", "content": "x"}],
            }
        )
    )
    plan = plan_for(view, Resolver(CONFIG))
    assert [t.label for t in plan.targets] == ["openai/gpt-4o", "local/a", "openai/gpt-4o-mini"]


def test_router_layer_writes_the_plan_and_answers_unknown_models_itself():
    inner = ScriptedApp()
    layer = RouterLayer(inner, routing=LiveRouting(CONFIG))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    call(layer, msgspec.json.encode(body))
    assert [t.label for t in inner.seen[0]["ctx"].plan.targets] == ["openai/gpt-4o"]
    result = call(
        RouterLayer(ScriptedApp(), routing=LiveRouting(CONFIG)), msgspec.json.encode({**body, "model": "unknown"})
    )
    assert result.status == 404 and result.json()["error"]["code"] == "model_not_found"
