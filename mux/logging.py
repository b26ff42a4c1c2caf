"""Logging setup for the standalone gateway: structlog, one JSON object per line, on standard output.

A library user who mounts mux layers keeps their own structlog configuration; nothing here runs on import.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any, Iterable

import msgspec
import structlog

from .errors import redact

_encode = msgspec.json.Encoder().encode


def _serialize(event: dict[str, Any], **_: Any) -> bytes:
    return _encode(event)


class UtcTimestamp:
    """A structlog processor: ``timestamp`` as ISO 8601 UTC with microseconds; the formatted seconds are
    reused within a second, so stamping costs a clock read and one string join."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


class RedactSecrets:
    """A structlog processor: removes configured secrets from rendered exception text."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        if self.secrets:
            for key in ("exception", "error"):
                value = event.get(key)
                if isinstance(value, str):
                    event[key] = redact(value, self.secrets)
        return event


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


def configure_logging(*, level: str = "info", secrets: Iterable[str | None] = (), stream: Any = None) -> None:
    """Configure structlog to write JSON lines (with ISO UTC timestamps) to ``stream`` (stdout by default)."""
    writer = LineWriter(stream or sys.stdout.buffer)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            UtcTimestamp(),
            structlog.processors.format_exc_info,
            RedactSecrets(secrets),
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
