"""One incremental Server-Sent Events parser for every provider, and the framing of outgoing events.

``SSEParser.feed(bytes)`` answers the events completed by those bytes; each byte is scanned once, so a
stream costs time linear in its length however it is split. Lines end in LF, CRLF or CR (a CR at the end of
one chunk and an LF at the start of the next are one line end). Field names and semantics follow the
WHATWG HTML "server-sent events" parsing rules: ``data`` lines join with LF, ``event`` names the event,
``id`` and ``retry`` are kept, and lines starting with ``:`` are comments.
"""

from __future__ import annotations

from msgspec import Struct


class SSEEvent(Struct, gc=False):
    """One dispatched event: its ``event`` name (``message`` by default) and its joined ``data``."""

    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental parser; reads bytes, answers completed events. State lives on the instance."""

    __slots__ = ("_pending", "_data", "_event", "_id", "_retry", "_skip_lf", "_has_data")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # bytes of an unfinished line, joined once a line end arrives
        self._data: list[bytes] = []
        self._has_data = False
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Answer the events that ``chunk`` completes, in order."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if chunk.find(b"\n") == -1 and chunk.find(b"\r") == -1:
            self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            data = b"".join(self._pending)
            self._pending = []
        else:
            data = chunk
        events: list[SSEEvent] = []
        start = 0
        length = len(data)
        while start < length:
            lf = data.find(b"\n", start)
            cr = data.find(b"\r", start, lf if lf != -1 else length)
            if cr != -1:
                end, nxt = cr, cr + 1
                if nxt < length:
                    if data[nxt] == 10:  # CRLF
                        nxt += 1
                else:
                    self._skip_lf = True
            elif lf != -1:
                end, nxt = lf, lf + 1
            else:
                break
            event = self._line(data[start:end])
            if event is not None:
                events.append(event)
            start = nxt
        if start < length:
            self._pending.append(data[start:])
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: an unterminated last line is processed; an event without its blank line is dropped,
        as the SSE rules require."""
        events = []
        if self._pending:
            event = self._line(b"".join(self._pending))
            self._pending = []
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == 58:  # ':' comment
            return None
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._has_data = True
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        event_name = self._event
        self._event = None
        if not self._has_data:
            return None
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self._has_data = False
        return SSEEvent(data=data, event=event_name or "message", id=self._id, retry=self._retry)


DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    """Answer one ``data:`` event carrying ``payload`` (which holds no line breaks, as JSON does not)."""
    return b"data: " + payload + b"\n\n"
