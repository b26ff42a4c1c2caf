"""What a request may cost before it runs: its prompt in tokens, and the worst case of its plan at catalog prices.

**Prompt estimate** (``prompt_tokens``), used by budgets and by token rate limits before the answer is known:
four characters a token for text (rounded up per piece), plus OpenAI's chat framing — 4 tokens a message and
3 for the reply's priming; tool definitions, a JSON schema, tool calls and audio or file parts count by the
length of their JSON; an image counts 1445 tokens (OpenAI's high-detail maximum for one image, 85 + 8 tiles of
170). Embedding inputs count four characters a token, token-id inputs one token an id. It is an estimate:
text that tokenizes densely (code, non-Latin scripts) can take more tokens than it says.

**Output bound** of a target: the request's ``max_completion_tokens`` (else ``max_tokens``), no more than the
model's maximum output in the catalog; without either, the model's maximum output, else ``DEFAULT_MAX_OUTPUT``
(4096) — times ``n`` choices. Embeddings have no output.

**Worst case of a plan** (``worst_case``): each target's prompt estimate at the highest of its input,
cached-input and cache-write prices (the worst any prompt token can cost) plus its output bound at the output
price. A cascade may pay for an answer at every target it escalates through, so its worst case is the **sum**
over its targets; any other plan (a single target, a fallback, weighted, latency, cost) is answered by one
attempt — failed attempts report no usage and cost nothing — so its worst case is the **max** over its
targets. Retries at one target are failures and add nothing. A target without a catalog price costs 0: budgets
count only what mux can price (give a model prices under ``catalog:`` to budget it). Amounts are integer
nano-USD, rounded up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec
from msgspec import Struct

from mux.catalog.models import Catalog, ModelInfo
from mux.money.admission import largest_fit
from mux.money.units import to_nano
from mux.wire.openai import EmbeddingsRequest, ImagePart, TextPart

CHARS_PER_TOKEN = 4
MESSAGE_TOKENS = 4
REPLY_TOKENS = 3
IMAGE_TOKENS = 1445
DEFAULT_MAX_OUTPUT = 4096

_encode = msgspec.json.Encoder().encode


def _text(n: int) -> int:
    return -(-n // CHARS_PER_TOKEN)


def prompt_tokens(request: Any) -> int:
    """Answer the prompt estimate of a chat or embeddings request view (see the module docstring)."""
    if type(request) is EmbeddingsRequest:
        return _embedding_tokens(request.input)
    total = REPLY_TOKENS
    for message in request.messages:
        total += MESSAGE_TOKENS
        content = message.content
        if isinstance(content, str):
            total += _text(len(content))
        elif content:
            for part in content:
                if type(part) is TextPart:
                    total += _text(len(part.text))
                elif type(part) is ImagePart:
                    total += IMAGE_TOKENS
                else:
                    total += _text(len(_encode(part)))
        calls = getattr(message, "tool_calls", None)
        if calls:
            total += sum(_text(len(c.function.name) + len(c.function.arguments)) for c in calls)
    if request.tools:
        total += _text(len(_encode(request.tools)))
    if request.response_format is not None:
        total += _text(len(_encode(request.response_format)))
    return total


def prompt_estimate(ctx: Any) -> int:
    """Answer the prompt estimate of the request of ``ctx`` (a ``mux.context.Context`` whose request is
    decoded), made once per request: the first call writes ``ctx.tokens``, later ones read it."""
    tokens = ctx.tokens
    if tokens is None:
        tokens = ctx.tokens = prompt_tokens(ctx.request)
    return tokens


def _embedding_tokens(value: str | list) -> int:
    if isinstance(value, str):
        return _text(len(value))
    total = 0
    for item in value:
        if isinstance(item, str):
            total += _text(len(item))
        elif isinstance(item, int):
            total += 1
        else:
            total += len(item)
    return total


def output_bound(request: Any, info: ModelInfo | None) -> int:
    """Answer the most output tokens one attempt of ``request`` can be billed for at a model described by
    ``info`` (all choices together)."""
    if type(request) is EmbeddingsRequest:
        return 0
    asked = request.max_completion_tokens or request.max_tokens
    most = info.max_output if info is not None else None
    if asked is None:
        bound = most if most is not None else DEFAULT_MAX_OUTPUT
    else:
        bound = asked if most is None else min(asked, most)
    return bound * (request.n or 1)


class TargetCost(Struct, frozen=True, gc=False):
    """One target's worst case: the prompt's cost, the price of one output token (nano-USD, rounded up, times
    ``n`` choices), the output bound and the total."""

    target: str
    prompt_nano: int
    unit_nano: int
    output_tokens: int
    nano: int
    priced: bool


class WorstCase(Struct, frozen=True, gc=False):
    """A plan's worst case: ``nano`` is what a budget reserves; ``combine`` is ``sum`` (cascade) or ``max``."""

    nano: int
    combine: str
    targets: list[TargetCost]
    prompt_tokens: int

    def largest_max_tokens(self, room: int) -> int | None:
        """Answer the largest ``max_tokens`` with which this request's worst case fits ``room`` nano-USD, or None
        when even its prompt does not fit. Rounding may make it a little smaller than the exact largest."""
        priced = [t for t in self.targets if t.priced]
        if not priced:
            return None if room < 0 else DEFAULT_MAX_OUTPUT
        if self.combine == "sum":
            fixed, unit = sum(t.prompt_nano for t in priced), sum(t.unit_nano for t in priced)
            return _fit(room, fixed, unit)
        fits = [_fit(room, t.prompt_nano, t.unit_nano) for t in priced]
        return None if None in fits else min(fits)  # type: ignore[type-var]


def _fit(room: int, fixed: int, unit: int) -> int | None:
    if unit <= 0:
        return None if fixed > room else 2**31 - 1
    return largest_fit(room, fixed, unit)


def target_cost(label: str, info: ModelInfo | None, prompt: int, request: Any) -> TargetCost:
    """Answer one target's worst case for ``request`` with a prompt estimate of ``prompt`` tokens."""
    output = output_bound(request, info)
    if info is None or info.input is None or info.output is None:  # no price (``ModelInfo.price`` is None)
        return TargetCost(label, 0, 0, output, 0, False)
    # USD per million: the worst any prompt token can cost
    prompt_price = max(info.input, info.cache_write or 0.0, info.cached_input or 0.0)
    prompt_nano = to_nano(prompt * prompt_price / 1_000_000)
    choices = 1 if type(request) is EmbeddingsRequest else (request.n or 1)
    unit = math.ceil(info.output * 1000 * choices - 1e-9)  # nano-USD per max_tokens unit
    total = to_nano((prompt * prompt_price + output * info.output) / 1_000_000)
    return TargetCost(label, prompt_nano, unit, output, total, True)


def worst_case(
    targets: Iterable[Any], request: Any, catalog: Catalog, *, cascade: bool, prompt: int | None = None
) -> WorstCase:
    """Answer the worst case of a plan's ``targets`` (``mux.routing.plan.Target``) for ``request``; ``cascade``
    sums over the targets, otherwise the most expensive one counts. ``prompt`` is the request's prompt
    estimate when already made (``prompt_estimate``)."""
    if prompt is None:
        prompt = prompt_tokens(request)
    info = catalog.info
    costs = [target_cost(t.label, info(t.provider, t.model), prompt, request) for t in targets]
    if len(costs) == 1:
        return WorstCase(costs[0].nano, "sum" if cascade else "max", costs, prompt)
    amounts = [c.nano for c in costs]
    nano = (sum(amounts) if cascade else max(amounts)) if amounts else 0
    return WorstCase(nano, "sum" if cascade else "max", costs, prompt)
