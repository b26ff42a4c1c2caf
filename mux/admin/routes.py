"""Admin endpoints for the live routing state, enabled by ``server.admin_token`` (``Authorization: Bearer``).

- ``GET /admin/routes``: each served route with its version, hash, strategy and recorded history;
- ``POST /admin/reload``: re-read the config source and serve it from the next request on (in-flight
  requests finish on the plan they had); a bad config answers 400 and the old one keeps serving;
- ``POST /admin/routes/{name}/rollback`` with ``{"version": N}``: serve an earlier recorded version;
- ``GET /admin/health``: breaker state, rate-limit mark (cooled) and recent latency per target;
- ``GET /admin/requests`` and ``GET /admin/analytics``: the request ledger (``mux.admin.analytics``).
- ``/admin/keys*``: virtual keys (``mux.admin.keys``), when the gateway has a key store.

Reloads and rollbacks are recorded in the routing state, so every worker sharing it follows (see
``mux.live``). What reads or writes the version store runs in a thread: it may wait on another process.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from mux.admin import analytics
from mux.asgi import Receive, Scope, Send, header, read_body, send_error, send_json
from mux.config import ConfigError
from mux.context import route_path
from mux.errors import InvalidRequest, MethodNotAllowed, MuxError, NotFound, Unauthorized
from mux.routing.live import LiveRouting

if TYPE_CHECKING:
    from mux.admin.keys import KeyAdmin
    from mux.ledger import LedgerWriter

PREFIX = "/admin/"
KEYS_PREFIX = "/admin/keys"


class _Rollback(msgspec.Struct, forbid_unknown_fields=True):
    version: int


class Admin:
    def __init__(
        self,
        *,
        routing: LiveRouting,
        token: str | None,
        ledger: LedgerWriter | None = None,
        logger: Any = None,
        keys: KeyAdmin | None = None,
    ) -> None:
        self.routing = routing
        self.ledger = ledger
        self.token = token.encode() if token else None
        self.logger = logger or structlog.get_logger("mux.admin")
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = route_path(scope), scope["method"]
        if self.token is None:
            return await send_error(send, NotFound(f"No endpoint {method} {path}."))
        given = header(scope, b"authorization") or b""
        if not hmac.compare_digest(given, b"Bearer " + self.token):
            return await send_error(send, Unauthorized("Admin endpoints need 'Authorization: Bearer <admin_token>'."))
        status = 200
        try:
            if self.keys is not None and (path == KEYS_PREFIX or path.startswith(KEYS_PREFIX + "/")):
                status, body = await self.keys.handle(scope, receive, path, method)
            else:
                body = await self._handle(scope, receive, path, method)
        except ConfigError as exc:
            return await send_error(send, InvalidRequest(str(exc), code="invalid_config"))
        except MuxError as exc:
            return await send_error(send, exc)
        await send_json(send, status, msgspec.json.encode(body))

    async def _handle(self, scope: Scope, receive: Receive, path: str, method: str) -> Any:
        if path == "/admin/routes" and method == "GET":
            return {"routes": await asyncio.to_thread(self.routes)}
        if path == "/admin/health" and method == "GET":
            health = self.routing.health
            return {
                "targets": {
                    label: {
                        "state": health.state(label),
                        "cooled": health.cooled(label),
                        "cooled_for_s": health.cooled_for_s(label),
                        "probing": h.probing,
                        "consecutive_failures": h.failures,
                        "latency_ms": h.latency_ms,
                    }
                    for label, h in health.targets.items()
                }
            }
        if path in analytics.PATHS and method == "GET":
            return await analytics.answer(self.ledger, path, scope)
        if path == "/admin/reload":
            _require_post(method, path)
            versions = await asyncio.to_thread(self.routing.reload)
            self.logger.info("config_reloaded", routes=versions)
            await self.routing.after_reload(self.logger)
            return {"routes": await asyncio.to_thread(self.routes)}
        if path.startswith("/admin/routes/") and path.endswith("/rollback"):
            _require_post(method, path)
            name = path[len("/admin/routes/") : -len("/rollback")]
            try:
                wanted = msgspec.json.decode(await read_body(scope, receive, 4096), type=_Rollback)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise InvalidRequest(f'Expected {{"version": N}}: {exc}', param="version") from None
            served = await asyncio.to_thread(self.routing.rollback, name, wanted.version)
            self.logger.info("route_rolled_back", route=name, version=served.version)
            return {"routes": await asyncio.to_thread(self.routes)}
        raise NotFound(f"No endpoint {method} {path}.")

    def routes(self) -> dict[str, Any]:
        answer = {}
        for name, served in self.routing.routes.items():
            history = [
                {"version": r.version, "hash": r.hash, "created": r.created}
                for r in self.routing.versions.history(name)
            ]
            answer[name] = {
                "version": served.version,
                "hash": served.hash,
                "strategy": served.config.strategy,
                "history": history,
            }
        return answer


def _require_post(method: str, path: str) -> None:
    if method != "POST":
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST.")
