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
