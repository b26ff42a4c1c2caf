"""TraceLayer around scripted inner apps: request ids, x-mux-* headers, one record per request."""

from __future__ import annotations

import pytest

from mux.context import context_of
from mux.layers import TraceLayer
from mux.routing.plan import Plan
from mux.wire import Usage

from .asgi_calls import ScriptedApp, call


class RecordingLogger:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def info(self, event: str, **fields) -> None:
        self.events.append((event, fields))


def test_every_response_carries_a_unique_request_id_and_leaves_one_record():
    logger = RecordingLogger()
    layer = TraceLayer(ScriptedApp(), logger=logger)
    first, second = call(layer, b"{}"), call(layer, b"{}")
    assert first.headers["x-mux-request-id"].startswith("req_")
    assert first.headers["x-mux-request-id"] != second.headers["x-mux-request-id"]
    assert [e for e, _ in logger.events] == ["request", "request"]
    assert logger.events[0][1]["request_id"] == first.headers["x-mux-request-id"]
    assert logger.events[0][1]["status"] == 200


def test_outcome_becomes_provider_model_cost_and_config_headers():
    async def inner(scope, receive, send):
        ctx = context_of(scope)
        ctx.outcome.provider, ctx.outcome.model = "openai", "gpt-4o-mini-2024-07-18"
        ctx.outcome.usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
        ctx.outcome.cost_usd = 0.0000045
        ctx.plan = Plan(targets=[], requested="@production", route="production", route_version=4)
        await ScriptedApp()(scope, receive, send)

    logger = RecordingLogger()
    result = call(TraceLayer(inner, logger=logger), b"{}")
    headers = result.headers
    assert headers["x-mux-provider"] == "openai"
    assert headers["x-mux-model-used"] == "gpt-4o-mini-2024-07-18"
    assert headers["x-mux-cost-usd"] == "0.0000045"
    assert headers["x-mux-config"] == "@production"
    assert headers["x-mux-config-version"] == "4"
    assert float(headers["x-mux-latency-ms"]) >= 0
    record = logger.events[0][1]
    assert record["prompt_tokens"] == 10 and record["completion_tokens"] == 5
    assert record["cost_usd"] == 0.0000045


def test_error_responses_are_recorded_with_their_error_code():
    logger = RecordingLogger()
    body = b'{"error":{"message":"x","type":"invalid_request_error","param":"model","code":"model_not_found"}}'
    result = call(TraceLayer(ScriptedApp(404, body), logger=logger), b"{}")
    assert result.status == 404 and "x-mux-request-id" in result.headers
    assert logger.events[0][1]["error"] == "model_not_found"


def test_a_request_whose_inner_app_raises_still_leaves_a_record():
    logger = RecordingLogger()
    with pytest.raises(RuntimeError):
        call(TraceLayer(ScriptedApp(raises=RuntimeError("x")), logger=logger), b"{}")
    assert logger.events[0][1]["status"] == 500
    assert logger.events[0][1]["error"] == "RuntimeError"


def test_paths_outside_the_prefixes_are_not_traced():
    logger = RecordingLogger()
    result = call(TraceLayer(ScriptedApp(), logger=logger, prefixes=("/v1/",)), b"", method="GET", path="/home")
    assert "x-mux-request-id" not in result.headers and logger.events == []


# --- the ledger row --------------------------------------------------------------------------------------------


class RecordingLedger:
    """Stands in for a LedgerWriter: keeps what was submitted, read back as a store reads a row's values."""

    def __init__(self, store_bodies: bool = False) -> None:
        self.store_bodies = store_bodies
        self.rows: list = []

    def submit(self, values) -> bool:
        from mux.ledger.row import COLUMNS
        from mux.ledger.sql import row_of

        assert type(values) is tuple and len(values) == len(COLUMNS)
        self.rows.append(row_of(values))
        return True


def test_an_llm_request_leaves_one_ledger_row_built_from_the_context():
    from types import SimpleNamespace

    from mux.context import Mlx
    from mux.keys.model import KeyRecord
    from mux.ledger import nano_usd
    from mux.wire.openai import CompletionTokensDetails, PromptTokensDetails

    async def inner(scope, receive, send):
        ctx = context_of(scope)
        ctx.key = KeyRecord(name="acme-prod", key_hash="a" * 64, created_at=0, team="acme")
        ctx.budget, ctx.ratelimit = "warned", "admitted"
        ctx.mlx = Mlx(tags={"app": "chat"}, end_user="u1", session_id="s1")
        ctx.request = SimpleNamespace(model="@production", stream=False)
        ctx.plan = Plan(targets=[], requested="@production", route="production", route_version=4, strategy="fallback")
        outcome = ctx.outcome
        outcome.provider, outcome.model, outcome.attempts, outcome.cache = "openai", "gpt-4o-mini", 2, "miss"
        outcome.usage = Usage(
            prompt_tokens=100,
            completion_tokens=20,
            total_tokens=120,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=64),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=8),
        )
        outcome.cost_usd, outcome.response_id, outcome.finish_reason = 0.0000123, "chatcmpl-1", "stop"
        await ScriptedApp()(scope, receive, send)

    ledger = RecordingLedger()
    result = call(TraceLayer(inner, logger=RecordingLogger(), ledger=ledger), b"{}")
    (row,) = ledger.rows
    assert row.request_id == result.headers["x-mux-request-id"] and row.response_id == "chatcmpl-1"
    assert (row.key_name, row.team, row.budget_outcome, row.rate_limit_outcome) == (
        "acme-prod",
        "acme",
        "warned",
        "admitted",
    )
    assert (row.end_user, row.tags, row.session_id) == ("u1", {"app": "chat"}, "s1")
    assert (row.model_requested, row.model_used, row.provider) == ("@production", "gpt-4o-mini", "openai")
    assert (row.route, row.route_version, row.strategy, row.attempts) == ("production", 4, "fallback", 2)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.reasoning_tokens) == (100, 20, 64, 8)
    assert row.cost_nano == nano_usd(0.0000123) == 12300 and row.cache_status == "miss"
    assert row.status == 200 and row.error_code is None and row.finish_reason == "stop" and row.stream is False
    assert 0 <= row.ttfb_ms <= row.latency_ms and row.trace["config"] == "production"
    assert row.request_body is None and row.response_body is None


def test_only_requests_to_an_llm_front_door_leave_a_ledger_row():
    ledger, logger = RecordingLedger(), RecordingLogger()
    layer = TraceLayer(ScriptedApp(), logger=logger, ledger=ledger)
    call(layer, b"", method="GET", path="/v1/models")
    call(layer, b"", method="GET", path="/v1/chat/completions")
    call(layer, b"{}", path="/v1/unknown")
    call(layer, b"{}", path="/api/v1/chat/completions")
    call(layer, b"{}", path="/v1/embeddings")
    assert len(logger.events) == 5 and len(ledger.rows) == 2


def test_refusals_failures_and_cancellations_leave_rows_with_their_status_and_code():
    import asyncio

    ledger = RecordingLedger()
    refused = b'{"error":{"message":"no","type":"authentication_error","param":null,"code":"invalid_api_key"}}'
    call(TraceLayer(ScriptedApp(401, refused), logger=RecordingLogger(), ledger=ledger), b"{}")
    with pytest.raises(RuntimeError):
        call(TraceLayer(ScriptedApp(raises=RuntimeError("x")), logger=RecordingLogger(), ledger=ledger), b"{}")
    with pytest.raises(asyncio.CancelledError):
        call(TraceLayer(ScriptedApp(raises=asyncio.CancelledError()), logger=RecordingLogger(), ledger=ledger), b"{}")

    async def cut(scope, receive, send):  # a stream that failed in-band after its first byte
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        context_of(scope).outcome.status, context_of(scope).outcome.error_type = 502, "upstream_error"
        await send({"type": "http.response.body", "body": b'data: {"error":{}}\n\n'})

    call(TraceLayer(cut, logger=RecordingLogger(), ledger=ledger), b"{}")
    assert [(r.status, r.error_code) for r in ledger.rows] == [
        (401, "invalid_api_key"),
        (500, "internal_error"),
        (499, "cancelled"),
        (502, "upstream_error"),
    ]


def test_bodies_are_in_the_row_only_when_the_ledger_stores_bodies():
    from mux.context import body_of

    async def inner(scope, receive, send):
        _, receive = await body_of(scope, receive, 1024)
        await ScriptedApp(body=b'{"id":"chatcmpl-1"}')(scope, receive, send)

    kept, stripped = RecordingLedger(store_bodies=True), RecordingLedger()
    call(TraceLayer(inner, logger=RecordingLogger(), ledger=kept), b'{"model":"x"}')
    call(TraceLayer(inner, logger=RecordingLogger(), ledger=stripped), b'{"model":"x"}')
    assert (kept.rows[0].request_body, kept.rows[0].response_body) == (b'{"model":"x"}', b'{"id":"chatcmpl-1"}')
    assert (stripped.rows[0].request_body, stripped.rows[0].response_body) == (None, None)
