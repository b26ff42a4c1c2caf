"""RouterLayer: decides the plan (ordered targets, retry policy) for a chat request; Dispatch executes it.

Reads ``ctx.request`` and ``ctx.mlx`` (end user and session, for sticky strategies). Writes ``ctx.plan``.
Answers 404 ``model_not_found``, 400 ``provider_not_configured`` and 503 ``no_route_available`` itself, and
``x-mux-dry-run: true`` with the plan's decision trace, calling no provider. The decision is
``mux.routing.Router.plan``, a pure function of the request, the config and the shared health.
"""

from __future__ import annotations

from typing import Awaitable

from mux.asgi import CHAT_PATHS, ASGIApp, Receive, Scope, Send, header, send_error, send_json
from mux.context import Context, with_request
from mux.routing.decision import decision_trace
from mux.errors import MuxError
from mux.routing.live import LiveRouting
from mux.wire.openai import ChatRequest, encoder


class RouterLayer:
    reads = frozenset({"mlx"})
    writes = frozenset({"plan"})

    def __init__(self, app: ASGIApp, *, routing: LiveRouting, max_body_bytes: int = 10 * 1024 * 1024,
                 paths: frozenset[str] = CHAT_PATHS) -> None:
        self.app = app
        self.routing = routing
        self.max_body_bytes = max_body_bytes
        self.paths = paths

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or scope["path"] not in self.paths or scope["method"] != "POST":
            return self.app(scope, receive, send)
        return with_request(scope, receive, send, self.max_body_bytes, self._route)

    def _route(self, ctx: Context, request: ChatRequest, scope: Scope, receive: Receive,
               send: Send) -> Awaitable[None]:
        mlx = ctx.mlx
        try:
            ctx.plan = self.routing.router.plan(
                request, end_user=mlx.end_user if mlx else None, session=mlx.session_id if mlx else None)
        except MuxError as error:
            return send_error(send, error)
        if header(scope, b"x-mux-dry-run") in (b"true", b"1"):
            body = {"object": "mux.dry_run", "mlx:trace": decision_trace(ctx.plan, ctx.trace, dry_run=True)}
            return send_json(send, 200, encoder.encode(body))
        return self.app(scope, receive, send)
