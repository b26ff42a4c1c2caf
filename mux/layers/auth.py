"""AuthLayer: virtual keys. A request to a protected path must present a valid key once any key exists.

Reads the key from ``Authorization: Bearer <key>`` or ``x-api-key`` (``mux.keys.decide.key_from_headers``)
and authenticates it through an injected ``KeyCache`` (one hash and one dict lookup in the common case; the
store is read per the bounds in ``mux.keys.cache``). Writes ``ctx.key``: the ``KeyRecord``, or ``None``
while the store holds no key (then every request passes, and a presented key is ignored).

Protected: HTTP requests whose path relative to the mount point (``route_path``, never a URL rebuilt from
``Host``) starts with one of ``prefixes`` (default ``/v1/`` and ``/api/v1/``: everything that reaches a
provider or reveals data). Anything else passes untouched: ``/healthz``, ``/readyz``, ``/admin/*`` (which
checks the admin token itself) and a wrapped app's own routes. On the lookups the admin may make too
(``admin_paths``: the generation lookup), the admin token passes in place of a key, and the handler behind
checks it (``ctx.key`` stays ``None``).

Answers, in the request's dialect (``deny``):

- no key, an unknown, revoked, expired or rotated-out key → 401 ``invalid_api_key``;
- a disabled key → 403 ``key_disabled``;
- a key with a ``models`` list asking for a model outside it → 403 ``model_not_allowed`` naming the model
  and the parameter (``model``, ``models[i]``, ``fallbacks[i]``); only then is the body decoded here;
- a key store that cannot be read → 503 ``key_store_unavailable`` (fails closed).

No key, hash or admin token appears in an answer, a header or a log line.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from mux.asgi import ASGIApp, Receive, Scope, Send
from mux.context import context_of, route_path
from mux.errors import MuxError
from mux.ingress import deny, ingress_of, request_of
from mux.keys.cache import KeyCache
from mux.keys.decide import allows_model, key_from_headers, model_denial
from mux.keys.model import KeyRecord
from mux.stores.keys import KeyStoreUnavailable

DEFAULT_PREFIXES = ("/v1/", "/api/v1/")
ADMIN_PATHS = frozenset({"/v1/generation", "/api/v1/generation"})

Resolve = Callable[[str], Iterable[str]]


class AuthLayer:
    reads: frozenset[str] = frozenset()
    writes = frozenset({"key"})

    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: KeyCache,
        prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
        resolve: Resolve | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
        admin_token: str | None = None,
        admin_paths: frozenset[str] = ADMIN_PATHS,
        logger: Any = None,
    ) -> None:
        """``cache`` is the lookup cache over an open key store. ``resolve`` answers the ``provider/model``
        targets a bare model name resolves to, so a key listing ``openai/gpt-4o`` may ask for ``gpt-4o``
        (without it, a bare name must be listed itself). ``admin_token`` passes on ``admin_paths``."""
        self.app = app
        self.cache = cache
        self.admin = b"Bearer " + admin_token.encode() if admin_token else None
        self.admin_paths = admin_paths
        self.prefixes = tuple(prefixes)
        self.resolve = resolve
        self.max_body_bytes = max_body_bytes
        self.logger = logger or structlog.get_logger("mux.auth")

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        path = route_path(scope)
        if not path.startswith(self.prefixes) or self.cache.known_empty():
            return self.app(scope, receive, send)
        if self.admin is None or path not in self.admin_paths:
            # the common case, without I/O and without a coroutine of its own: a key whose lookup is cached
            record = self.cache.authenticated(key_from_headers(scope["headers"]))
            if record is not None and not record.models:
                context_of(scope).key = record
                return self.app(scope, receive, send)
        return self._authenticated(scope, receive, send)

    async def _authenticated(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.admin is not None and route_path(scope) in self.admin_paths and self._is_admin(scope):
            return await self.app(scope, receive, send)
        try:
            record = await self._record(scope)
            if record is not None and record.models and ingress_of(scope) is not None:
                request, receive = await request_of(scope, receive, self.max_body_bytes)
                denied = self._model_denial(record, request)
                if denied is not None:
                    raise denied
        except MuxError as error:
            if isinstance(error, KeyStoreUnavailable):
                self.logger.warning("key_store_unavailable", error=error.message)
            ingress_of(scope)  # answer in the request's dialect
            return await deny(scope, send, error)
        context_of(scope).key = record
        await self.app(scope, receive, send)

    def _is_admin(self, scope: Scope) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return hmac.compare_digest(given, self.admin)  # type: ignore[arg-type]

    async def _record(self, scope: Scope) -> KeyRecord | None:
        """Answer the authenticated key, or ``None`` when no key exists; raise the denial."""
        try:
            return await self.cache.authenticate(key_from_headers(scope["headers"]))
        except KeyStoreUnavailable:
            raise
        except MuxError:
            if await self.cache.any_keys():
                raise
            return None

    def _model_denial(self, record: KeyRecord, request: Any) -> MuxError | None:
        for param, model in requested_models(request):
            if not allows_model(record, model, self._targets(model)):
                return model_denial(model, param).error()
        return None

    def _targets(self, model: str) -> Iterable[str]:
        if self.resolve is None or model.startswith("@") or "/" in model:
            return ()
        try:
            return self.resolve(model)
        except MuxError:
            return ()


def requested_models(request: Any) -> list[tuple[str, str]]:
    """Answer each model a request asks for, with the parameter naming it: ``model``, then a chat request's
    ``models[i]`` and ``fallbacks[i]`` (pure)."""
    asked = [("model", request.model)] if request.model else []
    for field in ("models", "fallbacks"):
        for index, name in enumerate(getattr(request, field, None) or ()):
            asked.append((f"{field}[{index}]", name))
    return asked
