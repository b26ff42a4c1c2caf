"""A fast fake OpenAI chat-completions upstream for the benchmark: raw asyncio protocol, httptools, uvloop.

``POST /v1/chat/completions`` answers a small completion (JSON, with usage), or with ``"stream": true`` an
SSE stream (role chunk, a handful of content chunks, finish chunk, the usage chunk when
``stream_options.include_usage`` asks for it, ``[DONE]``) in chunked transfer encoding, one write per event,
``--chunk-gap-ms`` apart on a fixed schedule from the first event. Anything else is a 404. Responses are built
once per (model, stream, usage) and cached: the fake costs about 5 µs of CPU per JSON answer and 70 µs per
stream, and is never the bottleneck.

Run: ``python bench/fake_upstream.py --port 9000 [--chunk-gap-ms 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from time import perf_counter

import httptools
import msgspec
import uvloop


class _Peek(msgspec.Struct):
    model: str = "gpt-4o-mini"
    stream: bool = False
    stream_options: dict | None = None


_peek = msgspec.json.Decoder(_Peek)
CREATED = 1_700_000_000
WORDS = ["Hello", "! How", " can I", " help you", " today?"]
CONTENT = "".join(WORDS)
USAGE = {
    "prompt_tokens": 24,
    "completion_tokens": 9,
    "total_tokens": 33,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def completion_body(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench0000000000000000000001",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        },
        separators=(",", ":"),
    ).encode()


def stream_events(model: str, include_usage: bool) -> list[bytes]:
    """Answer the SSE events of one stream, each already framed as one HTTP chunk."""
    base = {
        "id": "chatcmpl-bench0000000000000000000002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }

    def chunk(choices: list, usage=None) -> bytes:
        data = {**base, "choices": choices}
        if include_usage:
            data["usage"] = usage
        return json.dumps(data, separators=(",", ":")).encode()

    payloads = [
        chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
    ]
    payloads += [chunk([{"index": 0, "delta": {"content": w}, "logprobs": None, "finish_reason": None}]) for w in WORDS]
    payloads.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    if include_usage:
        payloads.append(chunk([], USAGE))
    events = [b"data: " + p + b"\n\n" for p in payloads] + [b"data: [DONE]\n\n"]
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events]


_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nopenai-processing-ms: 1\r\n"
    b"x-request-id: req_bench\r\ncontent-length: %d\r\n\r\n"
)
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"openai-processing-ms: 1\r\nx-request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
_LAST_CHUNK = b"0\r\n\r\n"

_cache: dict[tuple[str, bool, bool], object] = {}


def response_for(body: bytes):
    """Answer the cached response: ``bytes`` for JSON, a list of pieces for a stream (head + first event
    first)."""
    try:
        peek = _peek.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        peek = _Peek()
    usage = bool(peek.stream_options and peek.stream_options.get("include_usage"))
    key = (peek.model, peek.stream, usage)
    cached = _cache.get(key)
    if cached is None:
        if peek.stream:
            events = stream_events(peek.model, usage)
            cached = [_STREAM_HEAD + events[0], *events[1:-1], events[-1] + _LAST_CHUNK]
        else:
            payload = completion_body(peek.model)
            cached = _JSON_HEAD % len(payload) + payload
        if len(_cache) < 64:
            _cache[key] = cached
    return cached


class FakeProtocol(asyncio.Protocol):
    __slots__ = ("transport", "parser", "url", "body", "gap", "loop", "busy", "closed")

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.loop = asyncio.get_event_loop()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        body, self.body = b"".join(self.body), []
        if not url.endswith(b"/chat/completions"):
            self.transport.write(_NOT_FOUND)
            return
        response = response_for(body)
        if isinstance(response, bytes):
            self.transport.write(response)
            return
        if self.gap <= 0:
            for piece in response:
                self.transport.write(piece)
            return
        self.transport.write(response[0])
        start = perf_counter()
        self.loop.call_later(self.gap, self._next, response, 1, start)

    def _next(self, pieces: list[bytes], index: int, start: float) -> None:
        """Write event ``index``; the next is due ``gap`` after this one was *due* (not after it was written),
        so the loop's millisecond timers do not add up over a stream: it lasts (events - 1) x gap, +- 0.5 ms."""
        if self.closed:
            return
        self.transport.write(pieces[index])
        if index + 1 < len(pieces):
            due = start + (index + 1) * self.gap
            self.loop.call_later(max(0.0, due - perf_counter()), self._next, pieces, index + 1, start)


async def serve(host: str, port: int, gap: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeProtocol(gap), host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://{host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--chunk-gap-ms", type=float, default=1.0, help="pause between stream events (0: write them back to back)"
    )
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.chunk_gap_ms / 1000))


if __name__ == "__main__":
    main()
