"""Drive an ASGI app in-process and record what it sends: for layer tests against scripted inner apps."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec


class Recorded:
    """The messages an app sent, with convenient views of status, headers and body."""

    def __init__(self, messages: list[dict[str, Any]], scope: dict[str, Any]) -> None:
        self.messages = messages
        self.scope = scope

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start.get("headers", [])}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


def http_scope(
    method: str = "POST", path: str = "/v1/chat/completions", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
    }


def call(
    app: Any,
    body: bytes | list[bytes] = b"",
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    headers: list[tuple[bytes, bytes]] | None = None,
    scope: dict[str, Any] | None = None,
) -> Recorded:
    """Send one request (``body`` as one chunk, or a list of chunks) and answer what the app sent."""
    scope = scope or http_scope(method, path, headers)
    chunks = body if isinstance(body, list) else [body]
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return Recorded(sent, scope)


class ScriptedApp:
    """An inner app that records the context it saw and answers a fixed response."""

    def __init__(
        self,
        status: int = 200,
        body: bytes = b'{"ok":true}',
        *,
        raises: BaseException | None = None,
        read_body: bool = True,
    ) -> None:
        self.status = status
        self.body = body
        self.raises = raises
        self.read_body = read_body
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        received = b""
        if self.read_body and scope["type"] == "http":
            message = await receive()
            received = message.get("body", b"")
        self.seen.append({"scope": scope, "ctx": scope.get("mux"), "body": received})
        if self.raises is not None:
            raise self.raises
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": self.body})
