"""What the ledger's HTTP API answers and how it reads its query strings: the generation lookup
(``mux.generation``) and the admin's ``/admin/requests`` and ``/admin/analytics`` (``mux.admin.analytics``).

Times are ISO 8601 in UTC (``2025-06-15T15:06:40.123456+00:00``); a query parameter that is unknown, repeated
or malformed is refused with a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from mux.asgi import Scope
from mux.errors import InvalidRequest, MuxError
from mux.ledger.row import LedgerRow


class LedgerUnavailable(MuxError):
    """The ledger's store could not answer (it is down or unreachable)."""

    status = 503
    type = "server_error"
    code = "ledger_unavailable"


def iso(ts: float) -> str:
    """Answer epoch seconds as ISO 8601 in UTC."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def parse_time(text: str, param: str) -> float:
    """Answer the epoch seconds of an ISO 8601 time (UTC when it has no offset); refuse anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{param} must be an ISO 8601 time such as 2025-06-15T15:00:00Z, not {text!r}.", param=param
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def query_of(scope: Scope, allowed: Iterable[str]) -> dict[str, str]:
    """Answer the query string's parameters; refuse one that is not ``allowed`` or given twice."""
    known = frozenset(allowed)
    answer: dict[str, str] = {}
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if name not in known:
            raise InvalidRequest(f"Unknown parameter '{name}' (known: {', '.join(sorted(known))}).", param=name)
        if name in answer:
            raise InvalidRequest(f"Parameter '{name}' is given more than once.", param=name)
        answer[name] = value
    return answer


def int_param(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, not {value!r}.", param=name) from None


def generation_time_ms(row: LedgerRow) -> float | None:
    """The answering attempt's own time (the provider's part of the latency), from the decision trace."""
    attempts = (row.trace or {}).get("attempts") or []
    for attempt in reversed(attempts):
        if isinstance(attempt, dict) and attempt.get("status") in ("ok", "partial"):
            return attempt.get("latency_ms")
    return None


def generation_view(row: LedgerRow) -> dict[str, Any]:
    """One request as ``GET /v1/generation`` answers it (under ``data``).

    The names, types and units follow OpenRouter's "Get request & usage metadata for a generation"
    (``GET /api/v1/generation``; GenerationResponseData in openrouter.ai/docs/client-sdks/python/components/
    generationresponsedata): ``created_at`` an ISO 8601 string, ``latency`` "Total latency in milliseconds"
    and ``generation_time`` "Time taken for generation in milliseconds" (floats), ``total_cost`` in USD,
    ``tokens_prompt`` / ``tokens_completion`` integers, ``streamed`` and ``cancelled`` booleans. mux adds the
    request id, status, error code, cache status, tags, end user (OpenRouter's ``external_user``) and session.
    ``generation_time`` is the answering attempt's time at its provider (``None`` when nothing answered)."""
    return {
        "id": row.response_id or row.request_id,
        "request_id": row.request_id,
        "model": row.model_used,
        "model_requested": row.model_requested,
        "provider_name": row.provider,
        "created_at": iso(row.created_at),
        "tokens_prompt": row.prompt_tokens,
        "tokens_completion": row.completion_tokens,
        "tokens_cached": row.cached_tokens,
        "tokens_reasoning": row.reasoning_tokens,
        "total_cost": row.cost_usd,
        "latency": row.latency_ms,
        "generation_time": generation_time_ms(row),
        "time_to_first_byte": row.ttfb_ms,
        "streamed": row.stream,
        "cancelled": row.status == 499,
        "status": row.status,
        "error_code": row.error_code,
        "cache": row.cache_status,
        "finish_reason": row.finish_reason,
        "tags": row.tags,
        "end_user": row.end_user,
        "session_id": row.session_id,
    }


_ROW_FIELDS = tuple(f for f in LedgerRow.__struct_fields__ if not f.endswith("_body"))


def row_view(row: LedgerRow) -> dict[str, Any]:
    """One request as ``/admin/requests`` answers it: the row's fields (without bodies), ``created_at`` as
    ISO 8601, and ``cost_usd`` beside the exact ``cost_nano``."""
    view = {f: getattr(row, f) for f in _ROW_FIELDS}
    view["created_at"] = iso(row.created_at)
    view["cost_usd"] = row.cost_usd
    return view
