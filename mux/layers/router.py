"""RouterLayer: decides the plan (ordered targets, retry policy) of an LLM request; Dispatch executes it.

Reads ``ctx.request`` and ``ctx.mlx`` (end user and session, for sticky strategies). Writes ``ctx.plan``.
Answers 404 ``model_not_found``, 400 ``provider_not_configured`` and 503 ``no_route_available`` itself, and
``x-mux-dry-run: true`` with the plan's decision trace, calling no provider. The decision is
``mux.routing.plan.Router.plan``, a pure function of the request, the config and the shared health.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import msgspec

from mux.asgi import ASGIApp, Receive, Scope, Send, header, send_json
from mux.context import Context
from mux.errors import MuxError
from mux.ingress import deny, ingress_of, with_request
from mux.routing.decision import decision_trace
from mux.routing.live import LiveRouting

_encoder = msgspec.json.Encoder()


class RouterLayer:
    reads: frozenset[str] = frozenset()
    uses = frozenset({"mlx"})  # the end user and session, for sticky strategies, when present
    writes = frozenset({"plan"})

    def __init__(self, app: ASGIApp, *, routing: LiveRouting, max_body_bytes: int = 10 * 1024 * 1024) -> None:
        self.app = app
        self.routing = routing
        self.max_body_bytes = max_body_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or ingress_of(scope) is None:
            return self.app(scope, receive, send)
        return with_request(scope, receive, send, self.max_body_bytes, self._route)

    def _route(self, ctx: Context, request: Any, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        mlx = ctx.mlx
        try:
            ctx.plan = self.routing.router.plan(
                request, end_user=mlx.end_user if mlx else None, session=mlx.session_id if mlx else None
            )
        except MuxError as error:
            return deny(scope, send, error)
        if header(scope, b"x-mux-dry-run") in (b"true", b"1"):
            body = {"object": "mux.dry_run", "mlx:trace": decision_trace(ctx.plan, ctx.trace, dry_run=True)}
            return send_json(send, 200, _encoder.encode(body))
        return self.app(scope, receive, send)
