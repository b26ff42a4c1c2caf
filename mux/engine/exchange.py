"""One attempt on the wire: a non-streamed exchange, or a stream relayed event by event.

Both are bounded by one movable deadline: until the first byte (``first_byte_timeout_s``), then the whole
attempt; a stream's silence between two chunks is bounded by ``idle_timeout_s``. Nothing of a stream is sent
until its first translated chunk, so an attempt that fails before that falls over unseen; after it, a failure
is answered in ``StreamEnd.error`` for the caller to end the stream with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TypeVar

from mux.asgi import Send
from mux.config.schema import ProviderConfig
from mux.deadline import Deadline
from mux.engine.attempts import StreamEnd
from mux.engine.transport import Transport
from mux.errors import MuxError, UpstreamTimeout
from mux.ingress import StreamEncoder
from mux.providers.base import Adapter, StreamTranslator, UpstreamRequest
from mux.sse import SSEParser

T = TypeVar("T")


async def exchange(
    transport: Transport,
    upstream: UpstreamRequest,
    provider: ProviderConfig,
    timeout_s: float,
    answer: Callable[[int, Mapping[str, str], bytes], T],
) -> T:
    """Send a non-streamed upstream request and read its whole answer within ``timeout_s`` (and the provider's
    first-byte limit, if set); answer ``answer(status, headers, body)`` (called here, so that the caller needs no
    coroutine of its own around this one in the request's await chain). Raises ``UpstreamTimeout`` or
    ``UpstreamError``, or what ``answer`` raises."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    first_byte_s = provider.first_byte_timeout_s
    waiting = "start answering" if first_byte_s is not None and first_byte_s < timeout_s else "answer"
    try:
        with Deadline(now + min(timeout_s, first_byte_s or timeout_s)) as deadline:
            response = await transport.send(upstream, provider)
            if waiting == "start answering":
                waiting = "answer"
                deadline.move(now + timeout_s)
            body = await response.read()
    except TimeoutError:
        raise UpstreamTimeout(f"Provider '{provider.name}' did not {waiting} in time.") from None
    return answer(response.status, response.headers, body)


async def relay_stream(
    transport: Transport,
    upstream: UpstreamRequest,
    provider: ProviderConfig,
    adapter: Adapter,
    translator: StreamTranslator,
    encoder: StreamEncoder,
    send: Send,
    timeout_s: float,
    started: Callable[[StreamTranslator], None],
) -> StreamEnd:
    """Run one streamed attempt up to its last payloads (the caller sends them and ends the stream).

    ``started`` is called once, just before the response starts (the first chunk is ready). Raises
    ``MuxError`` if the attempt fails before that; after it, answers the error in ``StreamEnd.error``."""
    parser = SSEParser()
    loop = asyncio.get_running_loop()
    now = loop.time()
    deadline = now + timeout_s
    first_byte_s = provider.first_byte_timeout_s or timeout_s
    idle_s = provider.idle_timeout_s
    begun = perf_counter()
    ttfb_ms: float | None = None
    phase = "first byte"
    response = None
    error: MuxError | None = None
    payloads: list[bytes] = []
    last: bytes | None = None
    try:
        with Deadline(min(deadline, now + first_byte_s)) as timer:
            response = await transport.send(upstream, provider)
            if response.status >= 400:
                body = await response.read()
                raise adapter.parse_error(provider, response.status, body, response.headers)
            async for chunk in response.chunks():
                for event in parser.feed(chunk):
                    payloads.extend(translator.feed(event))
                if payloads:
                    if ttfb_ms is None:
                        ttfb_ms = round((perf_counter() - begun) * 1000, 3)
                        started(translator)
                        await send({"type": "http.response.start", "status": 200, "headers": encoder.headers})
                    await send({"type": "http.response.body", "body": encoder.chunks(payloads), "more_body": True})
                    last = payloads[-1]
                    payloads = []
                if ttfb_ms is not None:
                    phase = "next chunk"
                    timer.move(min(deadline, loop.time() + idle_s))
            for event in parser.close():
                payloads.extend(translator.feed(event))
            payloads.extend(translator.close())
    except TimeoutError:
        total = loop.time() >= deadline - 0.001
        error = UpstreamTimeout(f"Provider '{provider.name}' exceeded its {'total time' if total else phase} limit.")
    except MuxError as exc:
        error = exc
    finally:
        if response is not None:
            await response.close()
    if error is not None and ttfb_ms is None:
        raise error
    if ttfb_ms is None:  # a stream that ended well without a single content chunk
        ttfb_ms = round((perf_counter() - begun) * 1000, 3)
        started(translator)
        await send({"type": "http.response.start", "status": 200, "headers": encoder.headers})
    return StreamEnd(payloads=payloads, error=error, ttfb_ms=ttfb_ms, last=last)
