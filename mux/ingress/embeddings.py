"""The OpenAI embeddings front door (``POST /v1/embeddings``). Its usage object is the provider's (OpenAI's
embedding usage is ``prompt_tokens`` and ``total_tokens`` only, not chat's), with mux's ``cost`` added."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from mux.errors import MuxError
from mux.wire.openai import EmbeddingsRequest, Usage, decode_embeddings, with_fields

_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


class EmbeddingsIngress:
    name = "embeddings"
    operation: Literal["chat", "embeddings"] = "embeddings"

    def decode(self, body: bytes) -> tuple[EmbeddingsRequest, dict[str, msgspec.Raw]]:
        return decode_embeddings(body)

    def render_error(self, error: MuxError) -> bytes:
        return error.body()

    def answer(self, body: bytes, replace: dict[str, Any]) -> bytes:
        usage = replace.pop("usage", None)
        if isinstance(usage, Usage) and usage.cost is not None:
            replace["usage"] = _usage_with_cost(body, usage)
        return with_fields(body, replace) if replace else body

    def stream(self) -> Any:
        raise TypeError("embeddings are never streamed")


def _usage_with_cost(body: bytes, usage: Usage) -> dict[str, Any]:
    """The answer's own usage object with ``cost`` added (built from ``usage`` when the answer has none)."""
    fields = _fields.decode(body)
    current = msgspec.json.decode(fields["usage"]) if "usage" in fields else None
    if not isinstance(current, dict):
        current = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
    current["cost"] = usage.cost
    return current


EMBEDDINGS = EmbeddingsIngress()
