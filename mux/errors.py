"""The one error hierarchy of mux and the one renderer of OpenAI's error shape.

Every expected failure is a ``MuxError`` carrying its HTTP status, OpenAI ``type``, ``code`` and ``param``.
Boundaries map foreign errors into it: msgspec validation (``from_validation``), the upstream transport
(Dispatch) and provider bodies (each adapter).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec


class MuxError(Exception):
    """An error with a place in OpenAI's error shape; ``headers`` are extra response headers."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = list(headers)
        self.retryable = self.status in (408, 409, 429) or self.status >= 500 if retryable is None else retryable

    def body(self) -> bytes:
        """Answer the error rendered as OpenAI's ``{"error": {...}}`` JSON."""
        return render_error(self.message, self.type, self.param, self.code)


class InvalidRequest(MuxError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class Unauthorized(MuxError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(MuxError):
    """A genuine credential that may not do this (403)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class Conflict(MuxError):
    """The request conflicts with the state of what it names (409)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class BudgetExceeded(MuxError):
    status = 402
    type = "insufficient_quota"
    code = "budget_exceeded"


class RateLimited(MuxError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class ProviderNotConfigured(InvalidRequest):
    code = "provider_not_configured"


class UpstreamError(MuxError):
    """The provider answered with a failure, or could not be reached."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ClientDisconnected(MuxError):
    """The client went away before its answer: nothing is sent (there is no one to send it to); the request's
    record is marked with status 499 (nginx's "client closed request") and this code."""

    status = 499
    type = "client_disconnected"
    code = "client_disconnected"


class NoRouteAvailable(MuxError):
    status = 503
    type = "upstream_error"
    code = "no_route_available"


def retry_after_s(error: MuxError) -> float | None:
    """Answer the error's ``Retry-After`` in seconds, when it carries one in seconds (not an HTTP date)."""
    for name, value in error.headers:
        if name == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if 0 <= seconds < float("inf") else None  # (NaN fails both)
    return None


_error_encoder = msgspec.json.Encoder()


def render_error(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    """Answer OpenAI's error JSON for the given fields."""
    return _error_encoder.encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING_RE = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def param_of(path: str) -> str | None:
    """Turn a msgspec path such as ``.messages[0].content`` into ``messages[0].content``."""
    path = path.lstrip(".").replace("[...]", "")  # msgspec's marker for "some key of this mapping"
    return path or None


def from_validation(exc: msgspec.ValidationError | msgspec.DecodeError, *, prefix: str = "") -> InvalidRequest:
    """Map a msgspec decode or validation failure to an ``InvalidRequest`` naming the parameter."""
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        match = _PATH_RE.search(text)
        param = param_of(match.group("path")) if match else None
        detail = text[: match.start()] if match else text
        missing = _MISSING_RE.match(detail)
        if missing:
            field = missing.group("field")
            param = f"{param}.{field}" if param else field
            if prefix:
                param = f"{prefix}.{param}"
            return InvalidRequest(
                f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
            )
        if prefix and param:
            param = f"{prefix}.{param}"
        elif prefix:
            param = prefix
        where = f" for parameter '{param}'" if param else ""
        return InvalidRequest(f"Invalid value{where}: {detail}", param=param, code="invalid_value")
    return InvalidRequest(f"Request body is not valid JSON: {text}", code="invalid_json")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Answer ``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text
