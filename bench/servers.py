"""The servers under test, each run as its own single-worker uvicorn process (uvloop + httptools, no access
log):

- ``mux``: the gateway's default stack, ``mux.build_app(mux.parse_config(...))``, one provider ``openai``
  pointed at the fake upstream, with its JSON request log written to ``--log-file``. ``--client httpx`` swaps
  in ``HttpxTransport`` (for the client comparison). ``--variant`` adds to the config (``mux_config``):
  ``money-memory``, ``money-sqlite``, ``money-redis``: the virtual key the load generator sends
  (``loadgen.CLIENT_KEY``, with its own rpm/tpm), a budget on everything and a rate limit per end user, all
  far too large to refuse anything during a run, an admin token and a key secret, with their state in this
  process, in ``--state-dir``/state.db or in ``--redis-url`` under ``--state-prefix``; ``ledger``: the default
  stack plus the request ledger in ``--state-dir``/ledger.db.
- ``pass``: the floor for any Python gateway: a few lines of pure ASGI that forward the request body to the
  fake with one pooled client and relay the response, stream chunks as they arrive. ``--client aiohttp``
  (the default, configured as mux's ``AiohttpTransport``), ``httpx`` (an ``httpx.AsyncClient`` whose pool
  keeps as many idle connections as mux's does) or ``httpx-default`` (``httpx.AsyncClient()`` with httpx's
  default limits: 100 connections, 20 kept alive).

Run: ``python bench/servers.py mux|pass --port P --upstream http://127.0.0.1:U [--client ...] [--variant ...]``.
"""

from __future__ import annotations

import argparse
import os
import sys

from loadgen import CLIENT_KEY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

API_KEY = "sk-bench-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789"
KEY_SECRET = "bench-key-secret-0123456789"
_UPSTREAM_HEADERS = {"content-type": "application/json", "authorization": "Bearer " + API_KEY}

VARIANTS = ("default", "money-memory", "money-sqlite", "money-redis", "ledger")
# Far above anything a run reaches (a 2-core machine answers a few thousand requests per second, each costing
# well under a cent at its worst case): a refusal would make a variant look faster than it is.
MONEY = {
    "keys": [{"name": "bench", "key": CLIENT_KEY, "team": "bench", "rpm": 100_000_000, "tpm": 1_000_000_000}],
    "budgets": [{"name": "all", "usd": 1_000_000, "period": "day"}],
    "rate_limits": [{"name": "users", "scope": {"end_user": "*"}, "rpm": 100_000_000, "tpm": 1_000_000_000}],
}


def mux_config(
    upstream: str,
    variant: str = "default",
    *,
    state_dir: str | None = None,
    redis_url: str | None = None,
    state_prefix: str | None = None,
) -> dict:
    """Answer the config of a mux target: the default stack (one provider ``openai`` at ``upstream``) with
    what ``variant`` adds. ``state_dir`` holds the SQLite files (state, ledger); ``redis_url`` and
    ``state_prefix`` place the Redis state."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    config: dict = {
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "base_url": f"{upstream}/v1",
                "api_key": API_KEY,
                "models": ["gpt-4o-mini"],
            }
        ],
    }
    if variant.startswith("money-"):
        backend = variant.removeprefix("money-")
        if backend == "memory":
            state = "memory"
        elif backend == "sqlite":
            state = f"sqlite:///{_needed(state_dir, '--state-dir')}/state.db"
        else:
            state = _needed(redis_url, "--redis-url")
        config.update(MONEY, state=state, server={"admin_token": ADMIN_TOKEN, "key_secret": KEY_SECRET})
        if state_prefix:
            config["state_prefix"] = state_prefix
    elif variant == "ledger":
        config["ledger"] = {"store": f"sqlite:///{_needed(state_dir, '--state-dir')}/ledger.db"}
    return config


def _needed(value: str | None, option: str) -> str:
    if not value:
        raise ValueError(f"this variant needs {option}")
    return value


async def forget_redis_state(redis_url: str, prefix: str, source: str = ROOT) -> None:
    """Delete what a money-redis run left in Redis: every key under its ``prefix``, and the config's key record,
    which the key store keeps under a prefix of its own (it does not take ``state_prefix``)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    sys.path.insert(0, source)
    from mux.stores.keys import key_store

    store = key_store(redis_url)
    await store.open()
    try:
        for spec in MONEY["keys"]:
            await store.delete(spec["name"])
    finally:
        await store.close()


def mux_app(upstream: str, log_file: str, client: str, source: str = ROOT, variant: str = "default", **where):
    sys.path.insert(0, source)
    import mux
    from mux.engine.transport import HttpxTransport

    config = mux.parse_config(mux_config(upstream, variant, **where))
    stream = open(log_file, "ab")  # noqa: SIM115 - lives as long as the process
    mux.configure_logging(stream=stream, secrets=[API_KEY, CLIENT_KEY, ADMIN_TOKEN, KEY_SECRET])
    transport = HttpxTransport() if client == "httpx" else None
    return mux.build_app(config, transport=transport)


async def _read_body(receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    return body


async def _lifespan(receive, send, startup, shutdown) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


class AiohttpPassthrough:
    """Forward the body to ``url``; relay status, content type and body (stream chunks as they arrive)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = None

    async def _open(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30.0)
        self.session = aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )

    async def _close(self) -> None:
        await self.session.close()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send, self._open, self._close)
        body = await _read_body(receive)
        async with self.session.post(self.url, data=body, headers=_UPSTREAM_HEADERS) as response:
            content_type = response.headers.get("content-type", "application/json")
            if content_type.startswith("text/event-stream"):
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        "headers": [(b"content-type", content_type.encode())],
                    }
                )
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                data = await response.read()
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        "headers": [
                            (b"content-type", content_type.encode()),
                            (b"content-length", str(len(data)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": data})


class HttpxPassthrough:
    """The same pass-through over one ``httpx.AsyncClient``."""

    def __init__(self, url: str, *, default_limits: bool = False) -> None:
        self.url = url
        self.default_limits = default_limits
        self.client = None

    async def _open(self) -> None:
        import httpx

        if self.default_limits:
            self.client = httpx.AsyncClient(timeout=None, trust_env=False)
        else:
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000, keepalive_expiry=30.0)
            self.client = httpx.AsyncClient(timeout=None, trust_env=False, limits=limits)

    async def _close(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send, self._open, self._close)
        body = await _read_body(receive)
        request = self.client.build_request("POST", self.url, content=body, headers=_UPSTREAM_HEADERS)
        response = await self.client.send(request, stream=True)
        try:
            content_type = response.headers.get("content-type", "application/json")
            if content_type.startswith("text/event-stream"):
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [(b"content-type", content_type.encode())],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                data = await response.aread()
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            (b"content-type", content_type.encode()),
                            (b"content-length", str(len(data)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": data})
        finally:
            await response.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description="a server under test, one uvicorn worker")
    parser.add_argument("kind", choices=("mux", "pass"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the fake's base URL, http://127.0.0.1:PORT")
    parser.add_argument("--client", default="aiohttp", choices=("aiohttp", "httpx", "httpx-default"))
    parser.add_argument("--log-file", default=os.devnull, help="mux's JSON request log")
    parser.add_argument("--mux-source", default=ROOT, help="the directory holding the mux package to serve")
    parser.add_argument(
        "--variant",
        default="default",
        choices=VARIANTS,
        help="mux only: what the config adds to the default stack (see the module docstring)",
    )
    parser.add_argument("--state-dir", help="mux variants: the directory of the state and ledger SQLite files")
    parser.add_argument("--redis-url", help="money-redis: the state's Redis database, redis://host:port/db")
    parser.add_argument("--state-prefix", help="money-redis: the Redis key prefix (state_prefix)")
    parser.add_argument(
        "--gc-tune",
        action="store_true",
        help="before start-up completes, freeze the objects alive and raise the collection thresholds as the "
        "standalone gateway does for itself (mux.runtime), for the pass-through and an earlier mux alike",
    )
    args = parser.parse_args()

    if args.kind == "mux":
        app = mux_app(
            args.upstream,
            args.log_file,
            args.client,
            args.mux_source,
            args.variant,
            state_dir=args.state_dir,
            redis_url=args.redis_url,
            state_prefix=args.state_prefix,
        )
    elif args.client == "aiohttp":
        app = AiohttpPassthrough(f"{args.upstream}/v1/chat/completions")
    else:
        app = HttpxPassthrough(f"{args.upstream}/v1/chat/completions", default_limits=args.client == "httpx-default")

    import uvicorn

    if args.gc_tune:
        import gc

        gc.freeze()  # start-up objects (modules, config) are never traced again
        gc.set_threshold(50_000, 50, 100)  # as mux.runtime.tune_gc: above what the requests in flight hold alive

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
