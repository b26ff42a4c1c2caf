"""ASGI plumbing shared by layers and endpoints: route matching, bounded body reading, JSON and error replies,
and the watch that cancels work for a client that went away.

Nothing here knows a layer; every layer may use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any

from mux.errors import BodyTooLarge, ClientDisconnected, InvalidRequest, MuxError
from mux.later import Later

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_PREFIXES = ("/v1/", "/api/v1/")

JSON_HEADERS = [(b"content-type", b"application/json")]


def header(scope: Scope, name: bytes) -> bytes | None:
    """Answer the first value of request header ``name`` (lower-case bytes), if present."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body; refuse with ``BodyTooLarge`` once it passes ``limit`` bytes, and raise
    ``ClientDisconnected`` if the client goes away before the body is complete.

    A ``Content-Length`` over the limit is refused before anything is read; without one, reading stops at
    the first chunk that passes the limit."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("Content-Length is not a number.", code="invalid_header") from None
        if size > limit:
            raise _too_large(limit)
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False) and message["type"] == "http.request":
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("The client disconnected before its request body was complete.")
        if size > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes.")


def replaying(body: bytes, receive: Receive) -> Receive:
    """Answer a ``receive`` that yields ``body`` once, then defers to the original (for ``http.disconnect``)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ClientWatch:
    """While entered, a client that goes away (``http.disconnect``) cancels the task that entered it — and so
    whatever it awaits, such as an upstream request, whose connection is then freed. On exit that
    cancellation is absorbed and ``gone`` is true; any other cancellation goes on.

    The watch (a task awaiting ``receive``) starts only once the work has lasted ``WATCH_AFTER_S`` (at most
    twice that), from a timer shared by every watch of the loop, so work that ends sooner — every request of
    a busy gateway, at its usual latency — costs no task and no timer of its own; a client gone before the
    watch starts is noticed when it does. A plain ``with`` block around the awaited
    work: it adds no coroutine frame to the request's await chain. ``receive`` must be one whose body was
    already read (e.g. ``replaying``): messages before the disconnect are dropped."""

    __slots__ = ("_cancelled", "_finished", "_receive", "_since", "_task", "_watch", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None
        self._finished = False
        self._cancelled = False  # this watch cancelled the task
        self.gone = False

    def __enter__(self) -> ClientWatch:
        self._task = task = asyncio.current_task()
        loop = task.get_loop()  # type: ignore[union-attr]
        self._since = loop.time()
        _later.add(self, loop, WATCH_AFTER_S)
        return self

    def _start(self) -> None:
        if self._finished:
            return
        loop = self._task.get_loop()  # type: ignore[union-attr]
        self._watch = watch = loop.create_task(_disconnected(self._receive))
        watch.add_done_callback(self._client_gone)

    def _client_gone(self, watch: asyncio.Task) -> None:
        if not self._finished and not watch.cancelled() and watch.exception() is None:
            self._cancelled = True
            self._task.cancel()  # type: ignore[union-attr]

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        self._finished = True
        watch = self._watch
        if watch is None:  # the common case: done before its watch started
            return False
        watch.cancel()
        task: asyncio.Task = self._task  # type: ignore[assignment]
        if kind is asyncio.CancelledError and self._cancelled and task.uncancel() == 0:
            self.gone = True  # the only cancellation was this watch's
            return True
        return False


WATCH_AFTER_S = 0.1


def _due(watch: ClientWatch) -> None:
    """Start ``watch`` if its work has lasted ``WATCH_AFTER_S``; a younger one waits for the next timer (a
    finished one is dropped)."""
    if watch._finished:
        return
    loop = watch._task.get_loop()  # type: ignore[union-attr]
    if watch._since <= loop.time() - WATCH_AFTER_S:
        watch._start()
    else:
        _later.add(watch, loop, WATCH_AFTER_S)


_later: Later[ClientWatch] = Later(_due)  # the watches the next batch timer starts


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Answer a lifespan scope that has nothing to start or stop: startup and shutdown complete at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_json(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Send a complete JSON response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: MuxError, request_id: str = "", *, body: bytes | None = None) -> None:
    """Send ``error`` with its status and headers, and the request id if known; ``body`` is the error rendered
    in the request's dialect (default: OpenAI's error shape)."""
    if isinstance(error, ClientDisconnected):  # the client is gone: nothing to send
        return
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers]
    if request_id:
        headers.append((b"x-mux-request-id", request_id.encode()))
    await send_json(send, error.status, error.body() if body is None else body, headers)
