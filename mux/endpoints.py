"""The terminal router of the gateway: every LLM front door (``mux.ingress``) to Dispatch, ``/v1/models``,
``/v1/generation`` (``mux.generation``), ``/healthz`` (the process answers), ``/readyz`` (its resources are
open: 200, else 503), ``/admin/*``; any other path goes to the wrapped app (``mux.wrap``) or answers 404 in
OpenAI's error shape. Paths are matched relative to the mount point (``root_path``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from mux.admin.routes import PREFIX as ADMIN_PREFIX
from mux.admin.routes import Admin
from mux.asgi import ASGIApp, Receive, Scope, Send, answer_lifespan, send_error, send_json
from mux.config import Config
from mux.context import route_path
from mux.errors import MethodNotAllowed, NotFound
from mux.generation import PATHS as GENERATION_PATHS
from mux.generation import Generation
from mux.ingress import ingress_for
from mux.keys.decide import allows_model
from mux.keys.model import KeyRecord
from mux.routing.live import LiveRouting

if TYPE_CHECKING:
    from mux.admin.keys import KeyAdmin
    from mux.ledger import LedgerWriter

MODELS_PATHS = frozenset({"/v1/models", "/api/v1/models"})
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"

_HEALTH_BODY = b'{"status":"ok"}'
_READY_BODY = b'{"status":"ready"}'
_NOT_READY_BODY = b'{"status":"not_ready"}'


def model_list(config: Config) -> list[dict[str, Any]]:
    """Answer the entries of OpenAI's model list: the configured providers' declared models (ids
    ``provider/model``) and the routing configs (ids ``@name``)."""
    data = [
        {"id": f"{p.name}/{m}", "object": "model", "created": 0, "owned_by": p.name}
        for p in config.providers
        for m in p.models
    ]
    data += [{"id": f"@{name}", "object": "model", "created": 0, "owned_by": "mux"} for name in config.routes]
    return data


def models_body(config: Config) -> bytes:
    """Answer OpenAI's model list (``model_list``) as JSON."""
    return msgspec.json.encode({"object": "list", "data": model_list(config)})


def key_models_body(config: Config, key: KeyRecord) -> bytes:
    """Answer the model list as ``key`` sees it: only the entries its ``models`` allow."""
    data = [entry for entry in model_list(config) if allows_model(key, entry["id"])]
    return msgspec.json.encode({"object": "list", "data": data})


class Endpoints:
    """Routes by exact path; reads only ``ctx.key`` (when a layer set it), for the model list a key sees."""

    def __init__(
        self,
        *,
        dispatch: ASGIApp,
        routing: LiveRouting,
        fallback: ASGIApp | None = None,
        admin_token: str | None = None,
        ledger: LedgerWriter | None = None,
        logger: Any = None,
        keys: KeyAdmin | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """``ready`` answers whether the shared resources are open (``/readyz``); none: always ready."""
        self.dispatch = dispatch
        self.routing = routing
        self.fallback = fallback
        self.admin = Admin(routing=routing, token=admin_token, ledger=ledger, logger=logger, keys=keys)
        self.generation = Generation(ledger=ledger, admin_token=admin_token)
        self.ready = ready
        self._models: tuple[Config, bytes] | None = None

    def models(self) -> bytes:
        """The model list of the config in force (recomputed after a reload)."""
        config = self.routing.config
        if self._models is None or self._models[0] is not config:
            self._models = (config, models_body(config))
        return self._models[1]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Answer the awaitable of the endpoint's handler (no coroutine frame of its own)."""
        if scope["type"] != "http":
            if self.fallback is not None:
                return self.fallback(scope, receive, send)
            if scope["type"] == "lifespan":
                return answer_lifespan(receive, send)
            return _nothing()
        path = route_path(scope)
        method = scope["method"]
        if ingress_for(path) is not None:
            if method == "POST":
                return self.dispatch(scope, receive, send)
            return send_error(send, MethodNotAllowed(f"{method} is not allowed on {path}; use POST."))
        if path in MODELS_PATHS and method in ("GET", "HEAD"):
            ctx = scope.get("mux")
            key = ctx.key if ctx is not None else None
            if key is not None and key.models:  # a key limited to some models sees only those
                return send_json(send, 200, key_models_body(self.routing.config, key))
            return send_json(send, 200, self.models())
        if path in GENERATION_PATHS:
            return self.generation(scope, receive, send)
        if path.startswith(ADMIN_PREFIX):
            return self.admin(scope, receive, send)
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            return send_json(send, 200, _HEALTH_BODY)
        if path == READY_PATH and method in ("GET", "HEAD"):
            if self.ready is None or self.ready():
                return send_json(send, 200, _READY_BODY)
            return send_json(send, 503, _NOT_READY_BODY)
        if self.fallback is not None:
            return self.fallback(scope, receive, send)
        return send_error(send, NotFound(f"No endpoint {method} {path}."))


async def _nothing() -> None:
    return None
