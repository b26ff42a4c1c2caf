"""ErrorLayer: the outermost net. Anything unexpected becomes an OpenAI-shaped 500 carrying the request id.

Reads ``ctx.request_id`` and ``ctx.ingress`` (to answer in the request's dialect). Writes nothing. Logs the
failure with the request id and the exception's class and traceback (never its response body, which holds
neither); the client sees only a generic message. A failure after the response started cannot change its
status: it is logged and the response is ended, a server-sent event stream with one error event (and no
``[DONE]``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import structlog

from mux.asgi import ASGIApp, Message, Receive, Scope, Send, send_error
from mux.errors import MuxError
from mux.sse import frame


class ErrorLayer:
    reads: frozenset[str] = frozenset()
    reads_after: frozenset[str] = frozenset()
    uses = frozenset({"request_id", "ingress"})  # read when present, never required
    writes: frozenset[str] = frozenset()

    def __init__(self, app: ASGIApp, *, logger: Any = None) -> None:
        self.app = app
        self.logger = logger or structlog.get_logger("mux.errors")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        response_started = False
        response_ended = False
        event_stream = False

        def tracking_send(message: Message) -> Awaitable[None]:  # returns send's awaitable: no extra coroutine
            nonlocal response_started, response_ended, event_stream
            if message["type"] == "http.response.start":
                response_started = True
                for name, value in message.get("headers", ()):
                    if name == b"content-type":
                        event_stream = value.startswith(b"text/event-stream")
                        break
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response_ended = True
            return send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - this is the net
            ctx = scope.get("mux")
            request_id = ctx.request_id if ctx is not None else ""
            ingress = ctx.ingress if ctx is not None else None  # the request's dialect, if it has a front door
            if isinstance(exc, MuxError):
                error = exc
            else:
                self.logger.error(
                    "unhandled_error",
                    request_id=request_id,
                    error_type=type(exc).__name__,
                    path=scope.get("path"),
                    exc_info=exc,
                )
                error = MuxError(f"The gateway failed to handle this request (request id {request_id or 'unknown'}).")
            if not response_started:
                await send_error(
                    send, error, request_id, body=ingress.render_error(error) if ingress is not None else None
                )
            elif not response_ended:  # a stream ends with an error event, so the cut is never taken for an end
                tail = b""
                if event_stream:
                    tail = ingress.stream().fail(error) if ingress is not None else frame(error.body())
                await send({"type": "http.response.body", "body": tail, "more_body": False})
