"""The OpenAI adapter's reasoning-model translation: ``max_tokens`` sent as ``max_completion_tokens``, non-default
``temperature``/``top_p`` dropped with a trace note (or refused under ``provider.require_parameters``), the
client's own bytes forwarded for every other model; and end to end with the official ``openai`` SDK -> mux ->
the strict fake OpenAI, which refuses what the real API refuses for reasoning models."""

from __future__ import annotations

from typing import Any

import msgspec
import openai
import pytest

from mux.catalog import Catalog, ModelInfo
from mux.config import parse_config
from mux.errors import InvalidRequest
from mux.providers import ADAPTERS, Call
from mux.wire import decode_request
from tests.conftest import FAKE_OPENAI_KEY

HELLO = [{"role": "user", "content": "hello there"}]
OPENAI = parse_config({"providers": [{"name": "openai", "type": "openai", "api_key": "sk-up"}]}).providers[0]


def call(body: dict[str, Any], *, info: ModelInfo | None = None) -> Call:
    raw = msgspec.json.encode({"messages": HELLO, **body})
    view, fields = decode_request(raw)
    return Call(request=view, fields=fields, model=body["model"], body=raw, info=info)


def build(body: dict[str, Any], *, type_name: str = "openai", info: ModelInfo | None = None):
    provider = (
        OPENAI
        if type_name == "openai"
        else parse_config(
            {"providers": [{"name": "p", "type": type_name, "api_key": "sk-up", "base_url": "http://127.0.0.1:9"}]}
        ).providers[0]
    )
    upstream = ADAPTERS[type_name].build_request(provider, call(body, info=info))
    return upstream, msgspec.json.decode(upstream.body)


# --- the adapter ---------------------------------------------------------------------------------------------


def test_reasoning_model_gets_max_completion_tokens_and_loses_non_default_sampling_with_notes():
    upstream, body = build({"model": "o3-mini", "max_tokens": 50, "temperature": 0.2, "top_p": 0.5})

    assert body == {"messages": HELLO, "model": "o3-mini", "max_completion_tokens": 50}
    assert upstream.notes == [
        "renamed 'max_tokens' to 'max_completion_tokens': o3-mini is a reasoning model",
        "dropped 'temperature': o3-mini takes only the default value (1)",
        "dropped 'top_p': o3-mini takes only the default value (1)",
    ]


def test_reasoning_model_keeps_the_clients_max_completion_tokens_and_drops_max_tokens():
    upstream, body = build({"model": "gpt-5", "max_tokens": 50, "max_completion_tokens": 80})

    assert body["max_completion_tokens"] == 80 and "max_tokens" not in body
    assert upstream.notes == ["dropped 'max_tokens': 'max_completion_tokens' is set and gpt-5 takes only that"]


def test_reasoning_model_keeps_default_sampling_values():
    upstream, body = build({"model": "o4-mini", "temperature": 1, "top_p": 1.0, "max_completion_tokens": 9})

    assert body["temperature"] == 1 and body["top_p"] == 1.0 and body["max_completion_tokens"] == 9
    assert upstream.notes == []


def test_dated_snapshot_of_a_reasoning_model_is_translated_too():
    _, body = build({"model": "o3-mini-2025-01-31", "max_tokens": 5})
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body


@pytest.mark.parametrize("name, value", [("temperature", 0.2), ("top_p", 0.9)])
def test_require_parameters_refuses_non_default_sampling_naming_it(name, value):
    with pytest.raises(InvalidRequest) as info:
        build({"model": "o3", name: value, "provider": {"require_parameters": True}})
    assert info.value.param == name and info.value.status == 400
    assert "require_parameters" in info.value.message


def test_require_parameters_still_renames_max_tokens():
    _, body = build({"model": "o3", "max_tokens": 7, "provider": {"require_parameters": True}})
    assert body["max_completion_tokens"] == 7 and "provider" not in body


def test_other_models_are_forwarded_as_the_clients_own_bytes():
    sent = call({"model": "gpt-4o-mini", "max_tokens": 50, "temperature": 0.2})
    upstream = ADAPTERS["openai"].build_request(OPENAI, sent)
    assert upstream.body is sent.body and upstream.notes == []


def test_a_model_the_catalog_does_not_know_is_forwarded_as_asked():
    _, body = build({"model": "o9-preview", "max_tokens": 50, "temperature": 0.2})
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and "max_completion_tokens" not in body


def test_the_routers_catalog_entry_on_the_call_decides_over_the_built_in_one():
    _, marked = build({"model": "gpt-5.1", "max_tokens": 3}, info=ModelInfo(reasoning_model=True))
    _, unmarked = build({"model": "o3-mini", "max_tokens": 3}, info=ModelInfo(reasoning_model=False))
    assert marked["max_completion_tokens"] == 3 and "max_tokens" not in marked
    assert unmarked["max_tokens"] == 3


def test_presets_do_not_inherit_openais_built_in_reasoning_entries():
    upstream, body = build({"model": "o3-mini", "max_tokens": 4, "temperature": 0.3}, type_name="groq")
    assert body["max_tokens"] == 4 and body["temperature"] == 0.3 and upstream.notes == []


def test_catalog_marks_openai_reasoning_models_and_accepts_the_flag_in_overrides():
    catalog = Catalog(
        parse_config(
            {
                "providers": [{"name": "openai", "type": "openai", "api_key": "k"}],
                "catalog": {"openai/gpt-5.1": {"reasoning_model": True}},
            }
        ).catalog
    )
    assert catalog.info(OPENAI, "o1").reasoning_model is True
    assert catalog.info(OPENAI, "gpt-5.1").reasoning_model is True
    assert not catalog.info(OPENAI, "gpt-4o").reasoning_model


# --- the strict fake refuses what the real API refuses ---------------------------------------------------------


def test_fake_refuses_max_tokens_and_non_default_sampling_for_reasoning_models(fake_openai):
    with openai.OpenAI(base_url=fake_openai.base_url, api_key=FAKE_OPENAI_KEY, max_retries=0, timeout=5) as sdk:
        with pytest.raises(openai.BadRequestError) as max_tokens:
            sdk.chat.completions.create(model="o3-mini", messages=HELLO, max_tokens=50)
        with pytest.raises(openai.BadRequestError) as temperature:
            sdk.chat.completions.create(model="o3-mini", messages=HELLO, temperature=0.2)
        with pytest.raises(openai.BadRequestError) as top_p:
            sdk.chat.completions.create(model="gpt-5-mini", messages=HELLO, top_p=0.9)
        sdk.chat.completions.create(model="o3-mini", messages=HELLO, max_completion_tokens=50, temperature=1)
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=50, temperature=0.2)

    assert max_tokens.value.param == "max_tokens" and max_tokens.value.code == "unsupported_parameter"
    assert "Use 'max_completion_tokens' instead." in max_tokens.value.message
    assert temperature.value.param == "temperature" and temperature.value.code == "unsupported_value"
    assert "'temperature' does not support 0.2 with this model" in temperature.value.message
    assert top_p.value.param == "top_p" and top_p.value.code == "unsupported_value"


# --- end to end through mux ------------------------------------------------------------------------------------


def test_e2e_reasoning_model_answers_with_the_translated_parameters(client, fake_openai):
    completion = client.chat.completions.create(
        model="o3-mini", messages=HELLO, max_tokens=50, temperature=0.2, extra_body={"mlx:trace": True}
    )

    sent = fake_openai.last.body
    assert completion.choices[0].message.content
    assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent and "temperature" not in sent
    events = completion.model_extra["mlx:trace"]["events"]
    assert {
        "type": "translation",
        "target": "openai/o3-mini",
        "notes": [
            "renamed 'max_tokens' to 'max_completion_tokens': o3-mini is a reasoning model",
            "dropped 'temperature': o3-mini takes only the default value (1)",
        ],
    } in events


def test_e2e_require_parameters_refuses_temperature_before_any_upstream_call(client, fake_openai):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="openai/o3-mini",
            messages=HELLO,
            temperature=0.2,
            extra_body={"provider": {"require_parameters": True}},
        )

    assert caught.value.param == "temperature" and "temperature" in caught.value.message
    assert fake_openai.chat_requests == []


def test_e2e_reasoning_model_stream_is_translated_too(client, fake_openai):
    chunks = list(
        client.chat.completions.create(model="gpt-5-mini", messages=HELLO, stream=True, max_tokens=2, top_p=0.5)
    )

    sent = fake_openai.last.body
    assert sent["max_completion_tokens"] == 2 and "max_tokens" not in sent and "top_p" not in sent
    assert sent["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
