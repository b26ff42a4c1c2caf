"""The OpenAI-compatible presets: URLs, auth styles, and the documented rule for unaccepted parameters."""

from __future__ import annotations

import msgspec
import pytest

from mux.config import parse_config
from mux.errors import InvalidRequest
from mux.providers import ADAPTERS, Call
from mux.wire import decode_request


def provider(type_name: str, **extra):
    return parse_config({"providers": [{"name": "p", "type": type_name, "api_key": "sk-up", **extra}]}).providers[0]


def build(type_name: str, body: dict, **extra):
    view, fields = decode_request(
        msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})
    )
    call = Call(request=view, fields=fields, model=body.get("model", "m"))
    upstream = ADAPTERS[type_name].build_request(provider(type_name, **extra), call)
    return upstream, msgspec.json.decode(upstream.body)


def test_groq_drops_unaccepted_parameters_and_says_so_in_the_notes():
    upstream, body = build(
        "groq", {"model": "llama-3.3-70b-versatile", "logit_bias": {"1": 2}, "temperature": 0.5, "store": True}
    )
    assert upstream.url == "https://api.groq.com/openai/v1/chat/completions"
    assert upstream.headers["authorization"] == "Bearer sk-up"
    assert "logit_bias" not in body and "store" not in body and body["temperature"] == 0.5
    assert upstream.notes == ["dropped 'logit_bias': not accepted by groq", "dropped 'store': not accepted by groq"]


def test_require_parameters_turns_a_drop_into_a_400_naming_the_parameter():
    with pytest.raises(InvalidRequest) as info:
        build("groq", {"logprobs": True, "provider": {"require_parameters": True}})
    assert info.value.param == "logprobs"


def test_single_choice_providers_refuse_n_above_one():
    with pytest.raises(InvalidRequest) as info:
        build("groq", {"n": 3})
    assert info.value.param == "n"


def test_groq_strips_message_names():
    _, body = build("groq", {"messages": [{"role": "user", "content": "hi", "name": "alice"}]})
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_mistral_renames_seed_and_never_sends_stream_options():
    upstream, body = build("mistral", {"model": "mistral-small-latest", "seed": 7, "stream": True})
    assert body["random_seed"] == 7 and "seed" not in body and "stream_options" not in body
    assert "renamed 'seed' to 'random_seed' for mistral" in upstream.notes


def test_streams_to_openai_style_presets_ask_for_usage():
    _, body = build("deepseek", {"model": "deepseek-chat", "stream": True})
    assert body["stream_options"] == {"include_usage": True}


def test_azure_puts_the_deployment_in_the_path_and_the_key_in_api_key():
    upstream, body = build(
        "azure", {"model": "prod-gpt4o"}, base_url="https://res.openai.azure.com", api_version="2025-01-01-preview"
    )
    assert upstream.url == (
        "https://res.openai.azure.com/openai/deployments/prod-gpt4o/chat/completions?api-version=2025-01-01-preview"
    )
    assert upstream.headers["api-key"] == "sk-up" and "authorization" not in upstream.headers


def test_local_servers_send_no_auth_header_and_have_local_defaults():
    upstream, _ = build("ollama", {"model": "llama3.2"})
    assert upstream.url == "http://127.0.0.1:11434/v1/chat/completions"
    assert "authorization" not in upstream.headers


def test_azure_without_a_base_url_is_a_config_error():
    from mux.config import ConfigError

    with pytest.raises(ConfigError, match=r"providers\[0\].base_url: required"):
        parse_config({"providers": [{"name": "az", "type": "azure", "api_key": "k"}]})


def test_groq_strips_response_only_fields_an_sdk_message_echo_carries():
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello.", "annotations": [], "refusal": None, "audio": None},
        {"role": "user", "content": 'say "annotations"'},
    ]
    upstream, body = build("groq", {"messages": history})
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": 'say "annotations"'},
    ]
    assert upstream.notes == [
        "dropped 'messages[].annotations': not accepted by groq",
        "dropped 'messages[].audio': not accepted by groq",
        "dropped 'messages[].refusal': not accepted by groq",
    ]
    _, body = build("openai_compatible", {"messages": history}, base_url="http://127.0.0.1:8000/v1")
    assert body["messages"][1]["annotations"] == []  # other servers get the message as sent
