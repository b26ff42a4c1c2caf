"""RouterLayer: decides the plan (ordered targets) for a chat request; Dispatch executes it.

Reads ``ctx.request``. Writes ``ctx.plan``. Answers 404 ``model_not_found`` and 400
``provider_not_configured`` itself. The decision is ``mux.routing.plan_for``, a pure function.
"""

from __future__ import annotations

from ..asgi import CHAT_PATHS, ASGIApp, Receive, Scope, Send, send_error
from ..context import context_of, request_of
from ..errors import MuxError
from ..routing import Resolver, plan_for


class RouterLayer:
    reads = frozenset({"request"})
    writes = frozenset({"plan"})

    def __init__(self, app: ASGIApp, *, resolver: Resolver, max_body_bytes: int = 10 * 1024 * 1024,
                 paths: frozenset[str] = CHAT_PATHS) -> None:
        self.app = app
        self.resolver = resolver
        self.max_body_bytes = max_body_bytes
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        ctx = context_of(scope)
        try:
            request, receive = await request_of(scope, receive, self.max_body_bytes)
            ctx.plan = plan_for(request, self.resolver)
        except MuxError as error:
            return await send_error(send, error)
        await self.app(scope, receive, send)
