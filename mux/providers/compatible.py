"""The OpenAI-compatible family: servers that speak OpenAI's chat-completions dialect with known quirks.

``type: openai_compatible`` is the plain dialect at any ``base_url``. Each preset (``type: groq``,
``type: mistral``, ...) also knows its base URL, its API-key variable, its auth style and the parameters it
does not accept. The rule for such a parameter, visible in the decision trace as a translation note:

- dropped, when the request does not insist; refused with a 400 naming it when the request sets
  ``provider.require_parameters: true`` (OpenRouter's model);
- always refused when dropping would change the answer's shape (``n`` > 1 where only one choice exists);
- renamed where the provider spells it differently (Mistral's ``random_seed`` for ``seed``).

Sources, each the provider's own OpenAI-compatibility page or API reference: Groq ("OpenAI Compatibility":
logprobs, logit_bias, top_logprobs and messages[].name answer 400; n must be 1; a message property outside
its schema -- groq-python's ``chat_completion_*_message_param`` types -- answers 400 "property 'annotations' is
unsupported", which is what an OpenAI SDK message echoed back with ``model_dump()`` carries); Cerebras (OpenAI
compatibility: frequency_penalty, logit_bias, presence_penalty, parallel_tool_calls, service_tier answer
400); Mistral ("Chat Completion" reference: random_seed; extra fields are refused; usage arrives in the last
stream chunk without stream_options); Azure OpenAI (deployment in the path, api-version query, api-key header).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import msgspec
from msgspec import Struct

from mux.errors import InvalidRequest
from mux.providers.base import Call, drop_parameter
from mux.providers.openai import OpenAIAdapter
from mux.wire.openai import encoder

if TYPE_CHECKING:
    from mux.config.schema import ProviderConfig


class Preset(Struct, frozen=True, kw_only=True):
    """What one OpenAI-compatible provider needs beyond the plain dialect."""

    type_name: str
    base_url: str = ""
    env_keys: tuple[str, ...] = ()
    model_prefixes: tuple[str, ...] = ()
    unsupported: frozenset[str] = frozenset()  # top-level params dropped (or refused if required)
    renamed: tuple[tuple[str, str], ...] = ()  # (openai name, provider name)
    single_choice: bool = False  # n > 1 is refused
    dropped_message_fields: frozenset[str] = frozenset()  # message properties refused upstream: strip them
    stream_usage_option: bool = True  # accepts stream_options.include_usage
    auth: str = "bearer"  # "bearer" | "api-key" | "none"
    azure_paths: bool = False  # /openai/deployments/{model}/chat/completions?api-version=...


# Properties of OpenAI's response message that clients echo back in the history (the SDK's ``model_dump()`` keeps
# them) and that only OpenAI accepts on an input message.
_ECHOED_MESSAGE_FIELDS = frozenset({"annotations", "refusal", "audio"})

_OPENAI_ONLY = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "prediction",
        "prompt_cache_key",
        "safety_identifier",
        "verbosity",
        "modalities",
        "audio",
        "web_search_options",
    }
)

PRESETS: tuple[Preset, ...] = (
    Preset(type_name="openai_compatible"),
    Preset(type_name="azure", env_keys=("AZURE_OPENAI_API_KEY",), auth="api-key", azure_paths=True),
    Preset(
        type_name="groq",
        base_url="https://api.groq.com/openai/v1",
        env_keys=("GROQ_API_KEY",),
        unsupported=frozenset({"logprobs", "logit_bias", "top_logprobs"}) | _OPENAI_ONLY,
        single_choice=True,
        dropped_message_fields=frozenset({"name"}) | _ECHOED_MESSAGE_FIELDS,
    ),
    Preset(
        type_name="mistral",
        base_url="https://api.mistral.ai/v1",
        env_keys=("MISTRAL_API_KEY",),
        model_prefixes=(
            "mistral-",
            "ministral-",
            "codestral-",
            "magistral-",
            "pixtral-",
            "devstral-",
            "open-mistral-",
            "open-mixtral-",
        ),
        unsupported=frozenset({"logprobs", "logit_bias", "top_logprobs", "user", "stream_options", "reasoning_effort"})
        | _OPENAI_ONLY,
        renamed=(("seed", "random_seed"),),
        stream_usage_option=False,
    ),
    Preset(
        type_name="deepseek",
        base_url="https://api.deepseek.com/v1",
        env_keys=("DEEPSEEK_API_KEY",),
        model_prefixes=("deepseek-",),
        unsupported=_OPENAI_ONLY,
        single_choice=True,
    ),
    Preset(
        type_name="together",
        base_url="https://api.together.xyz/v1",
        env_keys=("TOGETHER_API_KEY",),
        unsupported=_OPENAI_ONLY,
    ),
    Preset(
        type_name="fireworks",
        base_url="https://api.fireworks.ai/inference/v1",
        env_keys=("FIREWORKS_API_KEY",),
        unsupported=_OPENAI_ONLY,
    ),
    Preset(
        type_name="xai",
        base_url="https://api.x.ai/v1",
        env_keys=("XAI_API_KEY",),
        model_prefixes=("grok-",),
        unsupported=_OPENAI_ONLY - {"store", "metadata"},
    ),
    Preset(
        type_name="perplexity",
        base_url="https://api.perplexity.ai",
        env_keys=("PERPLEXITY_API_KEY",),
        model_prefixes=("sonar",),
        unsupported=frozenset(
            {"logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "seed", "user"}
        )
        | _OPENAI_ONLY,
        single_choice=True,
    ),
    Preset(
        type_name="cerebras",
        base_url="https://api.cerebras.ai/v1",
        env_keys=("CEREBRAS_API_KEY",),
        unsupported=frozenset(
            {"frequency_penalty", "presence_penalty", "logit_bias", "parallel_tool_calls", "service_tier"}
        )
        | _OPENAI_ONLY,
        single_choice=True,
    ),
    Preset(type_name="openrouter", base_url="https://openrouter.ai/api/v1", env_keys=("OPENROUTER_API_KEY",)),
    Preset(type_name="ollama", base_url="http://127.0.0.1:11434/v1", auth="none", unsupported=_OPENAI_ONLY),
    Preset(type_name="vllm", base_url="http://127.0.0.1:8000/v1", unsupported=_OPENAI_ONLY),
    Preset(type_name="lmstudio", base_url="http://127.0.0.1:1234/v1", auth="none", unsupported=_OPENAI_ONLY),
)

AZURE_API_VERSION = "2024-10-21"


class CompatibleAdapter(OpenAIAdapter):
    """The OpenAI adapter with one preset's URL, auth and parameter rules applied."""

    type_name: ClassVar[str]

    def __init__(self, preset: Preset) -> None:
        self.preset = preset
        self.type_name = preset.type_name  # type: ignore[misc]
        self.default_base_url = preset.base_url  # type: ignore[misc]
        self.env_keys = preset.env_keys  # type: ignore[misc]
        self.model_prefixes = preset.model_prefixes  # type: ignore[misc]

    def unchanged_body(self, call: Call) -> bytes | None:
        return None  # a preset's parameter rules always apply

    def upstream_fields(self, call: Call, notes: list[str]) -> dict[str, msgspec.Raw]:
        preset = self.preset
        request = call.request
        fields = super().upstream_fields(call, notes) if preset.stream_usage_option else self.client_fields(call)
        if preset.single_choice and (request.n or 1) > 1:
            raise InvalidRequest(f"'{preset.type_name}' answers one choice per request; 'n' must be 1.", param="n")
        for name in sorted(preset.unsupported & fields.keys()):
            drop_parameter(name, f"not accepted by {preset.type_name}", notes, call.insists)
            del fields[name]
        for ours, theirs in preset.renamed:
            if ours in fields:
                fields[theirs] = fields.pop(ours)
                notes.append(f"renamed '{ours}' to '{theirs}' for {preset.type_name}")
        drop = preset.dropped_message_fields
        raw = bytes(fields["messages"]) if drop else b""
        if drop and any(b'"%s"' % name.encode() in raw for name in drop):  # a cheap pre-check before decoding
            messages = msgspec.json.decode(raw)
            dropped: set[str] = set()
            for message in messages:
                for name in drop & message.keys():
                    del message[name]
                    dropped.add(name)
            if dropped:
                fields["messages"] = msgspec.Raw(encoder.encode(messages))
                notes.extend(
                    f"dropped 'messages[].{name}': not accepted by {preset.type_name}" for name in sorted(dropped)
                )
        return fields

    def url(self, provider: ProviderConfig, model: str, path: str) -> str:
        if self.preset.azure_paths:
            version = provider.api_version or AZURE_API_VERSION
            return provider.url_for(f"/openai/deployments/{model}{path}?api-version={version}")
        return super().url(provider, model, path)

    def headers(self, provider: ProviderConfig) -> dict[str, str]:
        headers = {"content-type": "application/json", **provider.headers}
        if provider.api_key and self.preset.auth == "bearer":
            headers["authorization"] = "Bearer " + provider.api_key
        elif provider.api_key and self.preset.auth == "api-key":
            headers["api-key"] = provider.api_key
        return headers


ADAPTERS = tuple(CompatibleAdapter(preset) for preset in PRESETS)
