"""Run ASGI apps on real loopback sockets for tests: uvicorn in a background thread, one port each."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # threads cannot own signal handlers
        pass


@contextmanager
def serve(app: Any, *, lifespan: str = "on", root_path: str = "") -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 at a free port (behind ``root_path``, as ``--root-path`` does); yield its base
    URL (``http://127.0.0.1:PORT``)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        root_path=root_path,
    )
    server = _Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh event loop (tests stay synchronous)."""
    return asyncio.run(coro)
