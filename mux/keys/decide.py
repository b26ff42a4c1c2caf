"""Pure decisions about virtual keys: which key a request presents, whether it may pass, which models it
may use. No I/O; the clock is an argument.

Answers (``Denial.error()`` makes the OpenAI-shaped ``MuxError``):

- no key, an unknown or revoked (deleted) key, an expired key, a rotated-out key → **401**
  ``authentication_error`` / ``invalid_api_key``; the message tells expired and rotated apart (only the
  holder of the key can learn that) and never contains the key or its hash;
- a disabled key → **403** ``permission_error`` / ``key_disabled``: the key is genuine, so the client
  should not look for a typo (the openai SDK raises ``PermissionDeniedError``, and does not retry);
- a model the key may not use → **403** ``permission_error`` / ``model_not_allowed``, naming the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from msgspec import Struct

from mux.errors import Forbidden, MuxError, Unauthorized
from mux.keys.hashing import same_hash
from mux.keys.model import KeyRecord


class Denial(Struct, frozen=True):
    """Why a request is refused: HTTP status, error code and a message safe to show the client."""

    status: int
    code: str
    message: str
    param: str | None = None

    def error(self) -> MuxError:
        """Answer the ``MuxError`` to raise or send for this denial."""
        cls = Unauthorized if self.status == 401 else Forbidden
        return cls(self.message, code=self.code, param=self.param, status=self.status)


MISSING = Denial(
    401, "invalid_api_key", "Missing API key: send 'Authorization: Bearer <key>' or the 'x-api-key' header."
)
INVALID = Denial(401, "invalid_api_key", "Invalid API key.")
ROTATED = Denial(401, "invalid_api_key", "This API key was rotated; use its replacement.")
DISABLED = Denial(403, "key_disabled", "This API key is disabled.")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def check(record: KeyRecord | None, now: float, key_hash: str) -> Denial | None:
    """Answer why the key whose hash is ``key_hash`` may not pass at epoch time ``now``, or ``None``.

    ``record`` is what the store found for ``key_hash`` (by its current or previous hash), ``None`` when
    nothing. The previous hash of a rotated key passes only before ``previous_expires_at``."""
    if record is None:
        return INVALID
    if not same_hash(key_hash, record.key_hash):
        if not same_hash(key_hash, record.previous_hash):
            return INVALID
        if record.previous_expires_at is None or now >= record.previous_expires_at:
            return ROTATED
    if record.expires_at is not None and now >= record.expires_at:
        return Denial(401, "invalid_api_key", f"This API key expired at {_iso(record.expires_at)}.")
    if record.disabled:
        return DISABLED
    return None


def allows_model(record: KeyRecord, requested: str, resolves_to: Iterable[str] = ()) -> bool:
    """Whether ``record`` may ask for ``requested``: a ``provider/model``, a bare model name or an ``@route``.

    An empty ``models`` list allows everything. Otherwise an identifier passes when it is listed exactly; a
    listed bare name (``gpt-4o``) also allows that model from any provider (``openai/gpt-4o``). A bare request
    that is not listed passes when the caller knows what it resolves to (``resolves_to``: the
    ``provider/model`` targets) and every one of those is allowed. An allowed ``@route`` allows the route
    as configured, whatever its targets; asking for a target directly needs its own entry."""
    allowed = record.models
    if not allowed or requested in allowed:
        return True
    if requested.startswith("@"):
        return False
    _, slash, model = requested.partition("/")
    if slash:
        return model in allowed
    targets = list(resolves_to)
    return bool(targets) and all(allows_model(record, t) for t in targets)


def model_denial(requested: str, param: str = "model") -> Denial:
    """Answer the 403 for a model the key may not use, naming it and the request ``param`` that asked."""
    return Denial(403, "model_not_allowed", f"This API key is not allowed to use the model '{requested}'.", param)


def key_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Answer the key a request presents in its ASGI headers, or ``None``.

    ``Authorization: Bearer <key>`` (the openai SDK; the scheme in any case) wins; otherwise ``x-api-key``
    (the anthropic SDK). An ``Authorization`` header of another scheme is ignored. Surrounding blanks are
    dropped; an empty value counts as absent."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization" and bearer is None:
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and api_key is None and value.strip():
            api_key = value.strip()
    found = bearer if bearer is not None else api_key
    return found.decode("latin-1") if found is not None else None
