"""ASGI plumbing shared by layers and endpoints: route matching, bounded body reading, JSON and error replies.

Nothing here knows a layer; every layer may use it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, MutableMapping

from mux.errors import BodyTooLarge, InvalidRequest, MuxError

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
    """Read the whole request body; refuse with ``BodyTooLarge`` once it passes ``limit`` bytes.

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
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        if message["type"] == "http.disconnect":
            raise InvalidRequest("Client disconnected before the body was complete.", code="client_disconnected")
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
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: MuxError, request_id: str = "", *, body: bytes | None = None) -> None:
    """Send ``error`` with its status and headers, and the request id if known; ``body`` is the error rendered
    in the request's dialect (default: OpenAI's error shape)."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers]
    if request_id:
        headers.append((b"x-mux-request-id", request_id.encode()))
    await send_json(send, error.status, error.body() if body is None else body, headers)
