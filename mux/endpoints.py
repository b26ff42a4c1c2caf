"""The terminal router of the gateway: chat completions to Dispatch, ``/v1/models``, ``/healthz``; any other
path goes to the wrapped app (``mux.wrap``) or answers 404 in OpenAI's error shape."""

from __future__ import annotations

import msgspec

from .asgi import CHAT_PATHS, ASGIApp, Receive, Scope, Send, send_error, send_json
from .config import Config
from .errors import MethodNotAllowed, NotFound

MODELS_PATHS = frozenset({"/v1/models", "/api/v1/models"})
HEALTH_PATH = "/healthz"

_HEALTH_BODY = b'{"status":"ok"}'


def models_body(config: Config) -> bytes:
    """Answer OpenAI's model list for the configured providers' declared models (ids ``provider/model``)."""
    data = [
        {"id": f"{p.name}/{m}", "object": "model", "created": 0, "owned_by": p.name}
        for p in config.providers
        for m in p.models
    ]
    return msgspec.json.encode({"object": "list", "data": data})


class Endpoints:
    """Routes by exact path; reads nothing of the context."""

    def __init__(self, *, dispatch: ASGIApp, config: Config, fallback: ASGIApp | None = None) -> None:
        self.dispatch = dispatch
        self.fallback = fallback
        self._models = models_body(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self.fallback is not None:
                return await self.fallback(scope, receive, send)
            if scope["type"] == "lifespan":
                return await _lifespan(receive, send)
            return
        path = scope["path"]
        method = scope["method"]
        if path in CHAT_PATHS:
            if method == "POST":
                return await self.dispatch(scope, receive, send)
            return await send_error(send, MethodNotAllowed(f"{method} is not allowed on {path}; use POST."))
        if path in MODELS_PATHS and method in ("GET", "HEAD"):
            return await send_json(send, 200, self._models)
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            return await send_json(send, 200, _HEALTH_BODY)
        if self.fallback is not None:
            return await self.fallback(scope, receive, send)
        await send_error(send, NotFound(f"No endpoint {method} {path}."))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
