"""The worst case a budget reserves: prompt estimate, output bound, sum for a cascade and max for a fallback,
and the largest max_tokens that fits. A real bill within the estimate never exceeds the worst case."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.catalog.models import BUILTIN, Catalog, ModelInfo
from mux.catalog.prices import Price, cost_of
from mux.config import ProviderConfig
from mux.money.estimate import (
    DEFAULT_MAX_OUTPUT,
    IMAGE_TOKENS,
    output_bound,
    prompt_tokens,
    target_cost,
    worst_case,
)
from mux.money.units import to_nano
from mux.routing.plan import Target
from mux.wire.openai import ChatRequest, EmbeddingsRequest, PromptTokensDetails, Usage

OPENAI = ProviderConfig(name="openai", type="openai")
LOCAL = ProviderConfig(name="local", type="openai")


def chat(**fields) -> ChatRequest:
    return msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}, ChatRequest)


def test_the_prompt_estimate_counts_text_framing_tools_and_images():
    assert prompt_tokens(chat()) == 3 + 4 + 1  # OpenAI counts 8 prompt tokens for this one ("hi")
    long = chat(messages=[{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 41}])
    assert prompt_tokens(long) == 3 + 4 + 10 + 4 + 11
    image = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it"},
                    {"type": "image_url", "image_url": {"url": "https://x/i.png"}},
                ],
            }
        ]
    )
    assert prompt_tokens(image) == 3 + 4 + 3 + IMAGE_TOKENS
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert prompt_tokens(chat(tools=tools)) > prompt_tokens(chat())


def test_the_prompt_estimate_of_embeddings_counts_text_and_token_ids():
    assert prompt_tokens(EmbeddingsRequest(model="m", input="abcdefgh")) == 2
    assert prompt_tokens(EmbeddingsRequest(model="m", input=["abcd", "ef"])) == 2
    assert prompt_tokens(EmbeddingsRequest(model="m", input=[[1, 2, 3], [4]])) == 4


def test_the_output_bound_is_max_tokens_within_the_models_maximum_times_n():
    info = ModelInfo(max_output=1000)
    assert output_bound(chat(max_tokens=50), info) == 50
    assert output_bound(chat(max_completion_tokens=70, max_tokens=50), info) == 70
    assert output_bound(chat(max_tokens=5000), info) == 1000
    assert output_bound(chat(), info) == 1000
    assert output_bound(chat(), None) == DEFAULT_MAX_OUTPUT
    assert output_bound(chat(max_tokens=50, n=3), info) == 150
    assert output_bound(EmbeddingsRequest(model="m", input="x"), info) == 0


def test_a_cascade_reserves_the_sum_and_any_other_plan_the_most_expensive_target():
    targets = [Target(OPENAI, "gpt-4o-mini"), Target(OPENAI, "gpt-4o")]
    request = chat(max_tokens=100)
    each = [target_cost(t.label, BUILTIN.info(t.provider, t.model), 8, request).nano for t in targets]
    assert each[1] > each[0] > 0
    assert worst_case(targets, request, BUILTIN, cascade=True).nano == sum(each)
    assert worst_case(targets, request, BUILTIN, cascade=False).nano == max(each)


def test_a_target_without_a_price_costs_nothing_to_a_budget():
    worst = worst_case([Target(LOCAL, "llama")], chat(max_tokens=100), BUILTIN, cascade=False)
    assert worst.nano == 0 and not worst.targets[0].priced


def test_the_prompt_is_priced_at_the_highest_of_its_prompt_prices():
    catalog = Catalog({"local/m": ModelInfo(input=1.0, output=2.0, cache_write=3.0, max_output=10)})
    worst = worst_case([Target(LOCAL, "m")], chat(max_tokens=10), catalog, cascade=False)
    assert worst.nano == to_nano((8 * 3.0 + 10 * 2.0) / 1e6)


prices = st.builds(
    Price, st.floats(0.01, 80), st.floats(0.01, 80), st.none() | st.floats(0, 80), st.none() | st.floats(0, 100)
)


@settings(max_examples=200)
@given(price=prices, text=st.text(max_size=400), max_tokens=st.integers(1, 20_000), data=st.data())
def test_a_bill_within_the_prompt_estimate_and_max_tokens_never_exceeds_the_worst_case(price, text, max_tokens, data):
    request = chat(messages=[{"role": "user", "content": text}], max_tokens=max_tokens)
    info = ModelInfo(
        input=price.input, output=price.output, cached_input=price.cached_input, cache_write=price.cache_write
    )
    worst = target_cost("t", info, prompt_tokens(request), request).nano
    prompt = data.draw(st.integers(0, prompt_tokens(request)))
    cached = data.draw(st.integers(0, prompt))
    written = data.draw(st.integers(0, prompt - cached))
    usage = Usage(
        prompt_tokens=prompt,
        completion_tokens=data.draw(st.integers(0, max_tokens)),
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached, cache_write_tokens=written),
    )
    assert to_nano(cost_of(usage, price)) <= worst


@settings(max_examples=200)
@given(room=st.integers(0, 10**9), max_tokens=st.integers(1, 5000), cascade=st.booleans())
def test_the_largest_max_tokens_that_fits_really_fits(room, max_tokens, cascade):
    targets = [Target(OPENAI, "gpt-4o-mini"), Target(OPENAI, "gpt-4o")]
    request = chat(max_tokens=max_tokens)
    fit = worst_case(targets, request, BUILTIN, cascade=cascade).largest_max_tokens(room)
    if fit is not None and fit >= 1:
        assert worst_case(targets, chat(max_tokens=fit), BUILTIN, cascade=cascade).nano <= room
        if fit + 2 <= 16_384:  # both models' maximum output: beyond it, max_tokens no longer matters
            assert worst_case(targets, chat(max_tokens=fit + 2), BUILTIN, cascade=cascade).nano > room


def test_the_prompt_estimate_is_made_once_per_request_and_shared():
    from mux.context import Context
    from mux.money.estimate import prompt_estimate

    request = chat(messages=[{"role": "user", "content": "x" * 40}])
    ctx = Context(started=0.0, request=request)
    assert prompt_estimate(ctx) == prompt_tokens(request) == ctx.tokens
    ctx.request = chat(messages=[{"role": "user", "content": "x" * 4000}])
    assert prompt_estimate(ctx) == prompt_tokens(request)  # the first estimate stands
