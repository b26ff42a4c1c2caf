"""The key admin API under ``/admin/keys`` (the ``Admin`` router checks the admin token first).

- ``POST /admin/keys``: a ``KeySpec`` body (``name`` and any of ``key``/``key_sha256``, ``team``,
  ``metadata``, ``models``, ``expires_at``, ``disabled``, ``budget_usd``, ``budget_period``, ``rpm``,
  ``tpm``); answers 201 with the key's public view and the key in ``key`` — made here when the body gives
  neither ``key`` nor ``key_sha256``, and shown this once (``null`` for a ``key_sha256``);
- ``GET /admin/keys``: ``{"object": "list", "data": [...]}``, by name, without hashes;
- ``GET /admin/keys/{name}``, ``PATCH /admin/keys/{name}`` (a ``KeyPatch``: absent fields stay, ``null``
  clears), ``DELETE /admin/keys/{name}`` (revokes: ``{"name", "deleted": true}``);
- ``POST /admin/keys/{name}/rotate`` with an optional ``{"grace_s": 60}``: a new key in ``key``; the old
  one is refused at once, or after ``grace_s`` seconds.

Keys from the config file cannot be patched, rotated or deleted here (409 ``config_key``): the file is
authoritative for them and rewrites them at each start. Every write clears this process's ``KeyCache``, so
it takes effect here at once and elsewhere within the cache's bound. Log lines name keys, never show them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import structlog

from mux.asgi import Receive, Scope, read_body
from mux.errors import Conflict, InvalidRequest, MethodNotAllowed, NotFound, from_validation
from mux.keys.cache import KeyCache
from mux.keys.hashing import hash_key, hint_of, new_key
from mux.keys.model import KeyPatch, KeyRecord, patched, public_view, rotated
from mux.keys.spec import KeySpec, RawKey, record_from_spec
from mux.stores.keys import KeyHashInUse, KeyStore

PREFIX = "/admin/keys"
MAX_BODY = 64 * 1024


class Rotation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /admin/keys/{name}/rotate``: how long the old key keeps working (seconds), and
    optionally the new key itself (else one is made)."""

    grace_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 0.0
    key: RawKey | None = None


class KeyAdmin:
    """Handles ``/admin/keys*`` over an open key store and the ``KeyCache`` in front of it."""

    def __init__(
        self,
        *,
        store: KeyStore,
        cache: KeyCache,
        secret: str | bytes | None = None,
        logger: Any = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cache = cache
        self.secret = secret
        self.logger = logger or structlog.get_logger("mux.admin")
        self.wall = wall

    async def handle(self, scope: Scope, receive: Receive, path: str, method: str) -> tuple[int, Any]:
        """Answer the status and JSON-ready body for a request to ``path`` (under ``/admin/keys``); raise a
        ``MuxError`` for refusals."""
        rest = path[len(PREFIX) :].strip("/")
        if not rest:
            if method == "GET":
                return 200, {"object": "list", "data": [public_view(r) for r in await self.store.list()]}
            _allow(method, path, "GET", "POST")
            return 201, await self.create(await _decode(scope, receive, KeySpec))
        name, _, action = rest.partition("/")
        if action == "rotate":
            _allow(method, path, "POST")
            return 200, await self.rotate(name, await _decode(scope, receive, Rotation, empty=Rotation()))
        if action:
            raise NotFound(f"No endpoint {method} {path}.")
        if method == "GET":
            return 200, public_view(await self._get(name))
        if method == "PATCH":
            return 200, await self.patch(name, await _decode(scope, receive, KeyPatch))
        _allow(method, path, "GET", "PATCH", "DELETE")
        return 200, await self.delete(name)

    async def create(self, spec: KeySpec) -> dict[str, Any]:
        if spec.key is not None and spec.key_sha256 is not None:
            raise InvalidRequest("Give at most one of 'key' and 'key_sha256'.", param="key")
        if await self.store.get(spec.name) is not None:
            raise Conflict(
                f"A key named '{spec.name}' exists; rotate, patch or delete it instead.",
                param="name",
                code="key_exists",
            )
        record, made = record_from_spec(spec, secret=self.secret, now=self.wall(), source="api")
        await self._put(record)
        self.logger.info("key_created", key_name=record.name, team=record.team)
        return {**public_view(record), "key": made if made is not None else spec.key}

    async def rotate(self, name: str, rotation: Rotation) -> dict[str, Any]:
        record = self._writable(await self._get(name), "rotated")
        raw = rotation.key if rotation.key is not None else new_key()
        new = rotated(record, hash_key(raw, self.secret), now=self.wall(), grace_s=rotation.grace_s, hint=hint_of(raw))
        await self._put(new)
        self.logger.info("key_rotated", key_name=name, grace_s=rotation.grace_s)
        return {**public_view(new), "key": raw}

    async def patch(self, name: str, patch: KeyPatch) -> dict[str, Any]:
        record = patched(self._writable(await self._get(name), "patched"), patch)
        await self._put(record)
        self.logger.info("key_patched", key_name=name)
        return public_view(record)

    async def delete(self, name: str) -> dict[str, Any]:
        self._writable(await self._get(name), "deleted")
        if not await self.store.delete(name):
            raise NotFound(f"No key named '{name}'.", code="key_not_found")
        self.cache.clear()
        self.logger.info("key_deleted", key_name=name)
        return {"name": name, "deleted": True}

    async def _get(self, name: str) -> KeyRecord:
        record = await self.store.get(name)
        if record is None:
            raise NotFound(f"No key named '{name}'.", code="key_not_found")
        return record

    async def _put(self, record: KeyRecord) -> None:
        try:
            await self.store.put(record)
        except KeyHashInUse as exc:
            raise Conflict(
                f"That key already belongs to the key '{exc.other}'; use another.", param="key", code="key_in_use"
            ) from None
        finally:
            self.cache.clear()

    @staticmethod
    def _writable(record: KeyRecord, verb: str) -> KeyRecord:
        if record.source == "config":
            raise Conflict(
                f"The key '{record.name}' comes from the config file, which is authoritative for it "
                f"(rewritten at each start); it cannot be {verb} here: change the file and restart.",
                code="config_key",
            )
        return record


def _allow(method: str, path: str, *allowed: str) -> None:
    if method not in allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use {' or '.join(allowed)}.")


async def _decode(scope: Scope, receive: Receive, kind: type, empty: Any = None) -> Any:
    """Decode the JSON body as ``kind``; an empty body answers ``empty`` when given. Raise ``InvalidRequest``
    naming the parameter (never echoing a value)."""
    body = await read_body(scope, receive, MAX_BODY)
    if not body.strip() and empty is not None:
        return empty
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise from_validation(exc) from None
