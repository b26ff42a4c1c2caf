"""mux's own cost per request, without network, server or HTTP client: the ASGI app driven in-process over a
canned upstream transport, one request after another, on uvloop.

    python bench/micro.py                 # µs per request, json and stream, layer by layer
    python bench/micro.py --state sqlite  # the same, the keys/budget/rate-limit state in a SQLite file
    python bench/micro.py --profile json  # cProfile of the whole stack (json or stream), top functions
    python bench/micro.py --profile json --variant money-memory  # the same with a key, a budget, a rate limit

What it reports is the CPU time mux's layers, Dispatch, the adapter and the request log add to every request
on top of what uvicorn and aiohttp cost (which ``bench/run.py`` measures end to end with the pass-through
proxy as the floor). Three tables (``--tables``):

- ``default``: "+" rows add the default stack's layers one by one, outermost first, around Dispatch (which
  plans the request itself when no RouterLayer ran).
- ``money``: the same with the config of ``servers.py --variant money-*`` (a virtual key, a budget, a rate
  limit; their state per ``--state``): the stack's layers one by one from ErrorLayer + TraceLayer, so the
  AuthLayer, RateLimitLayer and BudgetLayer rows show each layer's own cost.
- ``ledger``: the default stack with and without the request ledger (``servers.py --variant ledger``, a tmp
  SQLite file): the difference is what the TraceLayer's ledger rows cost, their writing included (the
  writer's thread counts, and each measurement waits for its rows to be in the store).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fake_upstream import completion_body, stream_events  # noqa: E402
from loadgen import CLIENT_KEY, request_body  # noqa: E402
from servers import ADMIN_TOKEN, API_KEY, KEY_SECRET, VARIANTS, forget_redis_state, mux_config  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/15"  # --state redis: the benchmark's own database


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
        self.events = [piece.split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0] for piece in stream_events("gpt-4o-mini", True)]

    async def send(self, request, provider) -> CannedResponse:
        if b'"stream":true' in request.body:
            return CannedResponse(None, self.events)
        return CannedResponse(self.body, None)

    async def aclose(self) -> None:
        pass


def load_mux(source: str, log_path: str):
    sys.path.insert(0, source)
    import mux

    mux.configure_logging(
        stream=open(log_path, "ab"),  # noqa: SIM115 - lives as long as the process
        secrets=[API_KEY, CLIENT_KEY, ADMIN_TOKEN, KEY_SECRET],
    )
    return mux


def build(mux, config: dict, layers: int | None):
    """The app for ``config`` over the canned transport, with the first ``layers`` of its stack (``None``:
    all)."""
    parsed = mux.parse_config(config)

    def chosen(config, *args, **kw):
        full = mux.stack(config, *args, **kw)
        return full if layers is None else full[:layers]

    return mux.build_app(parsed, transport=CannedTransport(), layers=chosen)


async def drive(app, body: bytes, n: int, after=None) -> float:
    """Answer the seconds of CPU per request for ``n`` requests sent one after another; ``after`` (a coroutine
    function) runs inside the measurement once they are answered (a ledger's flush)."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {CLIENT_KEY}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    never = asyncio.get_running_loop().create_future()
    sent = []

    async def send(message):
        sent.append(message)

    def scope():
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }

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
    if after is not None:
        await after()
    started = time.process_time()
    for _ in range(n):
        await one()
    if after is not None:
        await after()
    return (time.process_time() - started) / n


class Row:
    """One line of a table: an app and its best CPU time per request in each mode."""

    def __init__(self, label: str, app, after=None, base: Row | None = None) -> None:
        self.label, self.app, self.after, self.base = label, app, after, base
        self.best = {"json": float("inf"), "stream": float("inf")}


def ledger_flush(app):
    async def flush() -> None:
        if not await app.resources.ledger.flush(timeout=60):
            raise SystemExit("the ledger did not write its rows within 60 s")

    return flush


def tables(mux, which: list[str], state: str, tmp: str, prefix: str) -> list[tuple[str, list[tuple[str, Row]]]]:
    """The title and the (label, row) lines of each table asked for (see the module docstring); a row may be
    shown in two tables, under another label."""
    upstream = "http://127.0.0.1:9"
    out = []
    names = [cls.__name__ for cls, _ in mux.stack(mux.parse_config({}))]
    default = mux_config(upstream)
    full_default = None
    if "default" in which:
        rows = []
        for k in range(len(names) + 1):
            label = "Endpoints + Dispatch" if k == 0 else f"+ {names[k - 1]}"
            rows.append(Row(label, build(mux, default, k), base=rows[-1] if rows else None))
        full_default = rows[-1]
        out.append(("the default stack, layer by layer", [(row.label, row) for row in rows]))
    if "money" in which:
        where = {"state_dir": tmp, "redis_url": REDIS_URL, "state_prefix": prefix}
        config = mux_config(upstream, f"money-{state}", **where)
        money = [cls.__name__ for cls, _ in mux.stack(mux.parse_config(config))]
        rows = []
        for k in range(2, len(money) + 1):
            label = " + ".join(money[:2]) if k == 2 else f"+ {money[k - 1]}"
            rows.append(Row(label, build(mux, config, k), base=rows[-1] if rows else None))
        out.append(
            (f"with a key, a budget and a rate limit (state: {state}), layer by layer", [(r.label, r) for r in rows])
        )
    if "ledger" in which:
        full_default = full_default or Row("the default stack", build(mux, default, None))
        app = build(mux, mux_config(upstream, "ledger", state_dir=tmp), None)
        ledger = Row("the default stack + the ledger (SQLite)", app, ledger_flush(app), full_default)
        rows = [("the default stack", full_default), (ledger.label, ledger)]
        out.append(("the request ledger (TraceLayer's rows, written to a tmp SQLite file)", rows))
    return out


async def measure(args) -> None:
    import uvloop  # noqa: F401 - the loop this runs on

    mux = load_mux(args.source, args.log)
    if args.profile:
        import cProfile
        import pstats

        tmp = tempfile.mkdtemp(prefix="mux-micro-")
        prefix = f"muxbench:micro-{uuid.uuid4().hex[:12]}:"
        try:
            config = mux_config(
                "http://127.0.0.1:9", args.variant, state_dir=tmp, redis_url=REDIS_URL, state_prefix=prefix
            )
            app = build(mux, config, None)
            after = ledger_flush(app) if args.variant == "ledger" else None
            body = request_body(args.profile == "stream")
            profiler = cProfile.Profile()
            profiler.enable()
            per = await drive(app, body, args.n, after)
            profiler.disable()
            await app.resources.aclose()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.variant == "money-redis":
                await forget_redis_state(REDIS_URL, prefix, args.source)
        print(
            f"{args.profile} ({args.variant}): {per * 1e6:.1f} µs per request under cProfile (inflated); top "
            "functions by own time:"
        )
        order, shown = os.environ.get("MICRO_SORT", "tottime"), int(os.environ.get("MICRO_N", "30"))
        pstats.Stats(profiler).sort_stats(order).print_stats(shown)
        return

    tmp = tempfile.mkdtemp(prefix="mux-micro-")
    prefix = f"muxbench:micro-{uuid.uuid4().hex[:12]}:"
    try:
        chosen = tables(mux, args.tables, args.state, tmp, prefix)
        print(
            f"mux stack cost per request, in-process, canned upstream: the fastest of {args.repeat} runs of "
            f"{args.n} requests (µs of CPU, GC included; in brackets: over the row it adds to)"
        )
        rows = list({id(row): row for _, table in chosen for _, row in table}.values())  # a row may be in two tables
        for _ in range(args.repeat):  # interleaved, so that a slow moment of the machine hits every row alike
            for row in rows:
                for mode in ("json", "stream"):
                    gc.collect()
                    per = await drive(row.app, request_body(mode == "stream"), args.n, row.after) * 1e6
                    row.best[mode] = min(row.best[mode], per)
        for title, table in chosen:
            print(f"\n{title}")
            print(f"{'stack':<44} {'json':>8} {'stream':>8}")
            for label, row in table:
                base = row.base.best if row.base is not None and label == row.label else None
                delta = "" if base is None else "   (" + ", ".join(f"{row.best[m] - base[m]:+.1f}" for m in base) + ")"
                print(f"{label:<44} {row.best['json']:>8.1f} {row.best['stream']:>8.1f}{delta}")
        for row in rows:
            await row.app.resources.aclose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.state == "redis" and "money" in args.tables:
            await forget_redis_state(REDIS_URL, prefix, args.source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="requests per measurement (default 5000)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per cell, the fastest kept (default 5)")
    parser.add_argument(
        "--tables",
        default="default,money,ledger",
        help="which tables: default, money, ledger, comma-separated (default all three)",
    )
    parser.add_argument(
        "--state",
        choices=("memory", "sqlite", "redis"),
        default="memory",
        help="the money table's state: this process, a tmp SQLite file, or Redis at "
        f"{REDIS_URL} under a prefix of the run's own (default memory)",
    )
    parser.add_argument(
        "--profile",
        choices=("json", "stream"),
        help="cProfile the full stack instead (the listing: MICRO_SORT, a pstats order, default tottime; MICRO_N "
        "lines, default 30)",
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="default",
        help="--profile: the config to profile, as servers.py --variant (default: the default stack)",
    )
    parser.add_argument("--source", default=os.path.dirname(HERE), help="directory holding the mux package")
    parser.add_argument("--log", default=os.devnull, help="where the request log goes (default /dev/null)")
    args = parser.parse_args()
    args.tables = [t for t in args.tables.split(",") if t]
    unknown = set(args.tables) - {"default", "money", "ledger"}
    if unknown:
        parser.error(f"unknown tables: {', '.join(sorted(unknown))}")
    import uvloop

    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
