"""mux's own cost per request, without network, server or HTTP client: the ASGI app driven in-process over a
canned upstream transport, one request after another, on uvloop.

    python bench/micro.py                 # µs per request, json and stream, layer by layer
    python bench/micro.py --profile json  # cProfile of the whole stack (json or stream), top functions

What it reports is the CPU time mux's layers, Dispatch, the adapter and the request log add to every request
on top of what uvicorn and aiohttp cost (which ``bench/run.py`` measures end to end with the pass-through
proxy as the floor). "+layers" rows add the default stack's layers one by one, outermost first, around
Dispatch (which plans the request itself when no RouterLayer ran).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fake_upstream import completion_body, stream_events  # noqa: E402
from loadgen import request_body  # noqa: E402
from servers import API_KEY  # noqa: E402


class CannedResponse:
    __slots__ = ("status", "headers", "_body", "_chunks")

    def __init__(self, body: bytes | None, chunks: list[bytes] | None) -> None:
        self.status = 200
        self.headers = {"content-type": "text/event-stream" if chunks else "application/json"}
        self._body = body
        self._chunks = chunks

    async def read(self) -> bytes:
        return self._body

    async def chunks(self):
        for chunk in self._chunks:
            yield chunk

    async def close(self) -> None:
        pass


class CannedTransport:
    """Answers every request at once with the fake upstream's bytes (a stream: one event per chunk)."""

    def __init__(self) -> None:
        self.body = completion_body("gpt-4o-mini")
        # the fake's HTTP chunks, without the chunked-encoding framing
        self.events = [piece.split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
                       for piece in stream_events("gpt-4o-mini", True)]

    async def send(self, request, provider) -> CannedResponse:
        if b'"stream":true' in request.body:
            return CannedResponse(None, self.events)
        return CannedResponse(self.body, None)

    async def aclose(self) -> None:
        pass


def build(source: str, layers: int | None, log_path: str):
    sys.path.insert(0, source)
    import mux

    config = mux.parse_config({"providers": [{"name": "openai", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                                              "api_key": API_KEY, "models": ["gpt-4o-mini"]}]})
    mux.configure_logging(stream=open(log_path, "ab"), secrets=[API_KEY])  # noqa: SIM115
    chosen = mux.stack if layers is None else (lambda config, *args, **kw: mux.stack(config, *args, **kw)[:layers])
    return mux.build_app(config, transport=CannedTransport(), layers=chosen), mux


async def drive(app, body: bytes, n: int) -> float:
    """Answer the seconds of CPU per request for ``n`` requests sent one after another."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", b"Bearer sk-client"), (b"content-length", str(len(body)).encode())]
    never = asyncio.get_running_loop().create_future()
    sent = []

    async def send(message):
        sent.append(message)

    def scope():
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8080), "state": {}}

    async def one():
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await never

        await app(scope(), receive, send)
        status = sent[0]["status"]
        if status != 200:
            raise SystemExit(f"mux answered {status}: {sent}")
        sent.clear()

    for _ in range(min(500, n)):  # warm up
        await one()
    started = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="requests per measurement (default 5000)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per cell, the fastest kept (default 5)")
    parser.add_argument("--profile", choices=("json", "stream"), help="cProfile the full stack instead")
    parser.add_argument("--source", default=os.path.dirname(HERE), help="directory holding the mux package")
    parser.add_argument("--log", default=os.devnull, help="where the request log goes (default /dev/null)")
    args = parser.parse_args()
    import uvloop

    if args.profile:
        import cProfile
        import pstats

        app, _ = build(args.source, None, args.log)
        body = request_body(args.profile == "stream")
        profiler = cProfile.Profile()
        profiler.enable()
        per = uvloop.run(drive(app, body, args.n))
        profiler.disable()
        print(f"{args.profile}: {per * 1e6:.1f} µs per request under cProfile (inflated); top functions by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return

    _, mux = build(args.source, 0, args.log)
    names = [cls.__name__ for cls, _ in mux.stack(mux.parse_config({}))]
    print(f"mux stack cost per request, in-process, canned upstream: the fastest of {args.repeat} runs of "
          f"{args.n} requests (µs of CPU, GC included)")
    print(f"{'stack':<44} {'json':>8} {'stream':>8}")
    apps = [build(args.source, k, args.log)[0] for k in range(len(names) + 1)]
    best = [{"json": float("inf"), "stream": float("inf")} for _ in apps]
    for _ in range(args.repeat):  # interleaved, so that a slow moment of the machine hits every row alike
        for k, app in enumerate(apps):
            for mode in ("json", "stream"):
                gc.collect()
                per = uvloop.run(drive(app, request_body(mode == "stream"), args.n)) * 1e6
                best[k][mode] = min(best[k][mode], per)
    previous = {}
    for k, row in enumerate(best):
        label = "Endpoints + Dispatch" if k == 0 else f"+ {names[k - 1]}"
        delta = "" if not previous else "   (" + ", ".join(f"{row[m] - previous[m]:+.1f}" for m in row) + ")"
        print(f"{label:<44} {row['json']:>8.1f} {row['stream']:>8.1f}{delta}")
        previous = row


if __name__ == "__main__":
    main()
