"""ErrorLayer around scripted inner apps."""

from __future__ import annotations

from mux.context import context_of
from mux.errors import RateLimited
from mux.layers import ErrorLayer

from .asgi_calls import ScriptedApp, call


class RecordingLogger:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def info(self, event: str, **fields) -> None:
        self.events.append((event, fields))

    error = info


def test_unexpected_exception_becomes_openai_shaped_500_without_traceback():
    secret = "sk-live-very-secret-value"
    inner = ScriptedApp(raises=RuntimeError(f"boom with {secret}"))

    async def with_id(scope, receive, send):
        context_of(scope).request_id = "req_abc"
        await inner(scope, receive, send)

    logger = RecordingLogger()
    result = call(ErrorLayer(with_id, logger=logger), b"{}")
    assert result.status == 500
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert "req_abc" in error["message"]
    assert secret not in result.body.decode() and "Traceback" not in result.body.decode()
    assert result.headers["x-mux-request-id"] == "req_abc"
    assert logger.events[0][0] == "unhandled_error"
    assert logger.events[0][1]["request_id"] == "req_abc"


def test_mux_error_raised_inside_is_answered_with_its_status_and_headers():
    inner = ScriptedApp(raises=RateLimited("slow down", headers=[("retry-after", "3")]))
    result = call(ErrorLayer(inner, logger=RecordingLogger()), b"{}")
    assert result.status == 429
    assert result.headers["retry-after"] == "3"
    assert result.json()["error"]["code"] == "rate_limit_exceeded"


def test_failure_after_response_started_ends_the_response_instead_of_a_second_start():
    async def half(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("late")

    result = call(ErrorLayer(half, logger=RecordingLogger()), b"{}")
    starts = [m for m in result.messages if m["type"] == "http.response.start"]
    assert len(starts) == 1
    assert result.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_non_http_scopes_pass_through_untouched():
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["type"])

    import asyncio

    asyncio.run(ErrorLayer(inner)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_a_bug_in_the_middle_of_a_stream_ends_it_with_an_error_event_not_a_clean_end():
    async def half_stream(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": b'data: {"x":1}\n\n', "more_body": True})
        raise RuntimeError("bug")

    result = call(ErrorLayer(half_stream, logger=RecordingLogger()), b"{}")
    last = result.messages[-1]
    assert last["more_body"] is False and last["body"].startswith(b'data: {"error":')
    assert b"[DONE]" not in result.body
