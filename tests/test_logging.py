"""mux's logging: JSON lines through structlog, and the request record's direct path writing the same line."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import pytest
import structlog

import mux
from mux.logging import RecordLogger


@pytest.fixture
def stream() -> Iterator[io.BytesIO]:
    out = io.BytesIO()
    mux.configure_logging(stream=out, secrets=["sk-secret-value-1234"])
    try:
        yield out
    finally:
        mux.configure_logging(stream=open(os.devnull, "wb"))  # noqa: SIM115 - lives as long as the process


def lines(stream: io.BytesIO) -> list[dict]:
    structlog.get_logger("any").info("flush-marker")  # outside a loop, the writer writes at once
    return [json.loads(line) for line in stream.getvalue().splitlines() if b"flush-marker" not in line]


def test_the_record_line_is_the_line_structlog_writes(stream: io.BytesIO) -> None:
    fields = {"request_id": "req_1", "status": 200, "trace": {"attempts": [{"target": "openai/gpt-4o-mini"}]}}
    RecordLogger("mux.requests").info("request", **dict(fields))
    structlog.get_logger("mux.requests").info("request", **dict(fields))
    direct, through_structlog = lines(stream)
    assert direct.pop("timestamp").endswith("Z") and through_structlog.pop("timestamp").endswith("Z")
    assert direct == through_structlog == {**fields, "event": "request", "level": "info"}
    assert list(direct) == list(through_structlog)  # same key order


def test_the_record_respects_the_configured_level() -> None:
    out = io.BytesIO()
    mux.configure_logging(stream=out, level="warning")
    try:
        RecordLogger("mux.requests").info("request", request_id="req_2")
        RecordLogger("mux.requests").warning("slow", request_id="req_3")
        structlog.get_logger("x").warning("flush-marker")
        written = [json.loads(line) for line in out.getvalue().splitlines() if b"flush-marker" not in line]
    finally:
        mux.configure_logging(stream=open(os.devnull, "wb"))  # noqa: SIM115
    assert [(r["event"], r["level"]) for r in written] == [("slow", "warning")]
