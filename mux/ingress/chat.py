"""The OpenAI chat-completions front door (``POST /v1/chat/completions``): the internal dialect itself, so
answers and chunks pass through as they are; streams are server-sent events ending in ``data: [DONE]``."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from mux.errors import MuxError
from mux.sse import DONE, frame
from mux.wire.openai import ChatRequest, decode_request, with_fields

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ChatStream:
    """A chat-completions event stream: one ``data:`` event per chunk; a cut ends with one error event and no
    ``[DONE]``, so it is never taken for a complete answer."""

    headers = _STREAM_HEADERS

    def chunks(self, payloads: list[bytes]) -> bytes:
        return b"".join(map(frame, payloads))

    def end(self) -> bytes:
        return DONE

    def fail(self, error: MuxError) -> bytes:
        return frame(error.body())


_STREAM = ChatStream()  # stateless: one serves every stream


class ChatIngress:
    name = "chat.completions"
    operation: Literal["chat", "embeddings"] = "chat"

    def decode(self, body: bytes) -> tuple[ChatRequest, dict[str, msgspec.Raw]]:
        return decode_request(body)

    def render_error(self, error: MuxError) -> bytes:
        return error.body()

    def answer(self, body: bytes, replace: dict[str, Any]) -> bytes:
        return with_fields(body, replace) if replace else body

    def stream(self) -> ChatStream:
        return _STREAM


CHAT = ChatIngress()
