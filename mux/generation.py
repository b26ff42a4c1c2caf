"""``GET /v1/generation?id=…`` (also ``/api/v1/generation``): one request's ledger record, as OpenRouter's
generation lookup answers it (``{"data": {...}}``, see ``mux.ledger.views.generation_view``).

``id`` is the response's ``id`` (``chatcmpl-…``) or its ``x-mux-request-id``. Who reads what:
``Authorization: Bearer <server.admin_token>`` reads every record; a request carrying a key (``ctx.key``,
written by the AuthLayer) reads only that key's records; a request without one reads only records made
without a key. Any other record, or none, is a 404 ``not_found``, so a key cannot learn that another key's
id exists.

Rows reach the store a few milliseconds after their request ends: a record not found while rows were queued
when the lookup began is looked up again once the writer has written them (``LedgerWriter.flush``, ``wait_s``
at most), so a client asking right after its answer finds it. "When the lookup began": a batch written while
the first lookup runs may hold the record, although the writer's queue is empty by the time it answers.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec

from mux.asgi import Receive, Scope, Send, header, send_error, send_json
from mux.context import context_of
from mux.errors import InvalidRequest, MethodNotAllowed, MuxError, NotFound
from mux.ledger import LedgerRow, LedgerWriter
from mux.ledger.views import LedgerUnavailable, generation_view, query_of

PATHS = frozenset({"/v1/generation", "/api/v1/generation"})


class Generation:
    """Answers the generation lookup from ``ledger``'s store; reads ``ctx.key`` when a layer wrote it."""

    def __init__(self, *, ledger: LedgerWriter | None, admin_token: str | None, wait_s: float = 2.0) -> None:
        self.ledger = ledger
        self.admin = b"Bearer " + admin_token.encode() if admin_token else None
        self.wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            row = await self._lookup(scope)
        except MuxError as error:
            return await send_error(send, error)
        await send_json(send, 200, msgspec.json.encode({"data": generation_view(row)}))

    async def _lookup(self, scope: Scope) -> LedgerRow:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed on {scope['path']}; use GET.")
        if self.ledger is None:
            raise NotFound("The request ledger is off: configure a `ledger:` section to look up generations.")
        id = query_of(scope, ("id",)).get("id")
        if not id:
            raise InvalidRequest("Missing required parameter: 'id'.", param="id", code="missing_required_parameter")
        everyone, key_name = self._reader(scope)
        queued = self._queued()  # before the lookup: a batch may be written while it runs
        row = await self._get(id, key_name)
        if row is None and queued:
            await self.ledger.flush(self.wait_s)
            row = await self._get(id, key_name)
        if row is None or not (everyone or row.key_name == key_name):
            raise NotFound(f"No generation with id '{id}'.")
        return row

    def _reader(self, scope: Scope) -> tuple[bool, str | None]:
        """Answer (reads every record, the key name the records must carry)."""
        given = header(scope, b"authorization")
        if self.admin is not None and given is not None and hmac.compare_digest(given, self.admin):
            return True, None
        key: Any = context_of(scope).key
        return False, key.name if key is not None else None

    async def _get(self, id: str, key_name: str | None) -> LedgerRow | None:
        assert self.ledger is not None
        try:
            return await self.ledger.store.get(id, key_name)
        except Exception as exc:  # noqa: BLE001 - the store's failure, whatever its driver calls it
            raise LedgerUnavailable(f"The ledger store could not answer: {type(exc).__name__}.") from exc

    def _queued(self) -> bool:
        """Whether rows wait in the writer (queued or being written): then a record not found yet may be
        among them."""
        assert self.ledger is not None
        stats = self.ledger.stats
        return bool(stats.queue_depth or stats.in_flight)
