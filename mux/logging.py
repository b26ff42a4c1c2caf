"""Logging setup for the standalone gateway: structlog, one JSON object per line, on standard output.

A library user who mounts mux layers keeps their own structlog configuration; nothing here runs on import.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

import msgspec
import structlog

from mux.errors import redact

_encode = msgspec.json.Encoder().encode


class JsonLines:
    """The one structlog processor mux configures: adds ``level`` and an ISO 8601 UTC ``timestamp``, formats
    an exception (with configured secrets removed from its text), and renders the event as one JSON line.
    One processor instead of a chain keeps a request's log line to a few microseconds; the formatted seconds
    of the timestamp are reused within a second."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s)
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, name: str, event: MutableMapping[str, Any]) -> bytes:
        event["level"] = "warning" if name == "warn" else name
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        if "exc_info" in event:
            event = structlog.processors.format_exc_info(_logger, name, event)
            if self.secrets and isinstance(event.get("exception"), str):
                event["exception"] = redact(event["exception"], self.secrets)
        return _encode(event)


class LineWriter:
    """A structlog logger that writes each rendered line to a binary file, once per event-loop turn: the lines
    of every request answered in one turn go out in one write (outside a running loop, at once)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self._lines: list[bytes] = []
        self._scheduled = False
        atexit.register(self.flush)

    def msg(self, line: bytes) -> None:
        self._lines.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        lines.append(b"")
        try:
            self.file.write(b"\n".join(lines))
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken stream must not fail requests
            pass


# What configure_logging set up, for RecordLogger: the renderer, the writer and the minimum level.
_configured: tuple[JsonLines, LineWriter, int] | None = None


def configure_logging(*, level: str = "info", secrets: Iterable[str | None] = (), stream: Any = None) -> None:
    """Configure structlog to write JSON lines (with ISO UTC timestamps) to ``stream`` (stdout by default)."""
    global _configured
    writer = LineWriter(stream or sys.stdout.buffer)
    render = JsonLines(secrets)
    minimum = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[render],
        wrapper_class=structlog.make_filtering_bound_logger(minimum),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
    _configured = (render, writer, minimum)


class RecordLogger:
    """The logger of the one record per request: once ``configure_logging`` has run, ``info`` renders and
    queues the line itself — the line structlog would write, without its per-call context copy and proxies
    (a few microseconds on every request); otherwise, and for every other level, it defers to
    ``structlog.get_logger(name)`` and the structlog configuration in force."""

    __slots__ = ("_fallback",)

    def __init__(self, name: str) -> None:
        self._fallback = structlog.get_logger(name)

    def info(self, event: str, **fields: Any) -> None:
        configured = _configured
        if configured is None:
            return self._fallback.info(event, **fields)
        render, writer, minimum = configured
        if minimum <= logging.INFO:
            fields["event"] = event
            writer.msg(render(None, "info", fields))
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)
