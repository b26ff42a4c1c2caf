"""The benchmark's load generator: a lean HTTP/1.1 keep-alive client (asyncio protocol + httptools on uvloop).

It runs one phase per JSON line read from stdin and answers one JSON line of results on stdout, so one
process serves the whole run. A phase is either

- ``open``: requests due at a fixed offered rate (``rate`` per second) for ``warmup + duration`` seconds,
  whatever the server's pace: a precise timer thread marks each request due and the event loop sends it at
  once on an idle connection (opening another, up to ``max_conns``; past that it waits in a queue). Latency
  counts from the request's *due* time, so a slow server is not let off by sending less (no coordinated
  omission); only requests due after the warm-up are measured. Or
- ``closed``: ``concurrency`` connections each sending its next request as soon as the previous one is
  answered, for ``warmup + duration`` seconds; throughput is the completions inside the measured window.

Either way it reads the CPU time (utime + stime from ``/proc/<pid>/stat``) of the watched processes at the
start and end of the measured window. Every phase is bounded: no request is issued after its window, and
at most ``grace`` seconds are spent waiting for stragglers (counted as timeouts).

For streams, ``ttfb`` is the time to the first body byte and ``total`` to the end of the stream; a stream
that does not end in ``data: [DONE]`` counts as an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import deque
from time import perf_counter

import httptools
import uvloop

CLK_TCK = os.sysconf("SC_CLK_TCK")
_DONE_TAIL = b"data: [DONE]\n\n"
# The client's key, sent to every target as ``Authorization: Bearer``: the pass-through and mux without keys
# ignore it; the mux variants with virtual keys (``servers.py --variant money-*``) configure it as their key.
CLIENT_KEY = "sk-bench-client-0123456789abcdef"

BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
        {"role": "user", "content": "Write a haiku about the sea, then explain each of its lines in one sentence."},
    ],
    "temperature": 0.7,
    "max_tokens": 256,
    "user": "bench-user-42",
}


def request_body(stream: bool, model: str = "gpt-4o-mini") -> bytes:
    body = {**BODY, "model": model}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


def http_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: mux-bench/1\r\n"
        f"Accept: application/json\r\nContent-Type: application/json\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, live and exited), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """Busy (user + nice + system) and stolen CPU seconds of the whole machine, all CPUs together."""
    with open("/proc/stat", "rb") as handle:
        fields = handle.readline().split()
    user, nice, system, steal = int(fields[1]), int(fields[2]), int(fields[3]), int(fields[8])
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class Req:
    __slots__ = ("due", "sent", "first", "end", "ok", "measured")

    def __init__(self, due: float, measured: bool) -> None:
        self.due = due
        self.sent = 0.0
        self.first = 0.0
        self.end = 0.0
        self.ok = False
        self.measured = measured


class Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.req: Req | None = None
        self.status = 0
        self.tail = b""
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, req: Req) -> None:
        self.req = req
        self.status = 0
        self.tail = b""
        req.sent = perf_counter()
        self.transport.write(self.phase.payload)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        req = self.req
        if req is not None and not req.first:
            req.first = perf_counter()
        self.tail = (self.tail + body)[-16:]

    def on_message_complete(self) -> None:
        req, self.req = self.req, None
        if req is None:
            return
        req.end = perf_counter()
        req.ok = self.status == 200 and (not self.phase.stream or self.tail.endswith(_DONE_TAIL))
        phase = self.phase
        phase.answered += 1
        phase.statuses[self.status] = phase.statuses.get(self.status, 0) + 1
        keep = self.parser.should_keep_alive()
        if not keep:
            self.lost = True
            self.transport.close()
        self.phase.completed(self, req)

    def connection_lost(self, exc) -> None:
        self.lost = True
        req, self.req = self.req, None
        if req is not None:
            req.end = perf_counter()
            req.ok = False
            self.phase.completed(self, req)


class Phase:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.host = spec.get("host", "127.0.0.1")
        self.port = int(spec["port"])
        self.stream = bool(spec["stream"])
        self.payload = http_request(
            self.host,
            self.port,
            spec.get("path", "/v1/chat/completions"),
            request_body(self.stream, spec.get("model", "gpt-4o-mini")),
        )
        self.warmup = float(spec.get("warmup", 1.0))
        self.duration = float(spec["duration"])
        self.grace = float(spec.get("grace", 5.0))
        self.watch: dict[str, int] = {k: int(v) for k, v in (spec.get("watch") or {}).items()}
        self.loop = asyncio.get_running_loop()
        self.records: list[Req] = []
        self.errors = 0
        self.connects = 0
        self.answered = 0  # every completed request, warm-up included
        self.statuses: dict[int, int] = {}  # answers by HTTP status, warm-up included
        self.conns: list[Conn] = []
        self.window: tuple[float, float] = (0.0, 0.0)
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        self.drained = asyncio.Event()

    # --- helpers -----------------------------------------------------------------------------------------

    async def connect(self) -> Conn:
        self.connects += 1
        _, conn = await self.loop.create_connection(lambda: Conn(self), self.host, self.port)
        self.conns.append(conn)
        return conn

    def snapshot(self) -> dict[str, float]:
        cpu = {name: cpu_seconds(pid) for name, pid in self.watch.items()}
        cpu["loadgen"] = own_cpu()
        cpu["_busy"], cpu["_steal"] = machine_cpu()
        return cpu

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()

    def completed(self, conn: Conn, req: Req) -> None:
        raise NotImplementedError

    # --- results -----------------------------------------------------------------------------------------

    def result(self, measured_count: int, completed_in_window: int | None = None) -> dict:
        ok = [r for r in self.records if r.ok]
        errors = sum(1 for r in self.records if not r.ok)
        start, end = self.window
        wall = max(end - start, 1e-9)
        done = completed_in_window if completed_in_window is not None else len(self.records)
        open_loop = self.spec["mode"] == "open"
        origin = (lambda r: r.due) if open_loop else (lambda r: r.sent)
        out = {
            "spec": self.spec,
            "measured": measured_count,
            "ok": len(ok),
            "errors": errors,
            "timeouts": max(0, measured_count - len(self.records)) if open_loop else 0,
            "window_s": round(wall, 4),
            "throughput_rps": round(done / wall, 1),
            "completed": done,
            "connections": self.connects,
            "answered": self.answered,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "latency_ms": _stats([(r.end - origin(r)) * 1000 for r in ok]),
        }
        if self.stream:
            out["ttfb_ms"] = _stats([(r.first - origin(r)) * 1000 for r in ok if r.first])
        if open_loop:
            out["send_lag_ms"] = _stats([(r.sent - r.due) * 1000 for r in ok])
            out["service_ms"] = _stats([(r.end - r.sent) * 1000 for r in ok])
            if self.spec.get("samples"):  # raw values (ms), so that rounds can be pooled
                out["samples"] = {
                    "latency": [round((r.end - r.due) * 1000, 4) for r in ok],
                    "service": [round((r.end - r.sent) * 1000, 4) for r in ok],
                    "lag": [round((r.sent - r.due) * 1000, 4) for r in ok],
                }
                if self.stream:
                    out["samples"]["ttfb"] = [round((r.first - r.due) * 1000, 4) for r in ok if r.first]
        cpu = {}
        if self.cpu_start and self.cpu_end:
            ours = sum(self.cpu_end[n] - self.cpu_start[n] for n in self.cpu_start if not n.startswith("_"))
            busy = self.cpu_end["_busy"] - self.cpu_start["_busy"]
            out["machine"] = {
                # CPU used by processes other than the ones under test, the fake and the load generator (other
                # tenants of a shared machine), and CPU stolen by the hypervisor, both in cores
                "other_cores": round(max(0.0, busy - ours) / wall, 3),
                "steal_cores": round((self.cpu_end["_steal"] - self.cpu_start["_steal"]) / wall, 3),
            }
        for name in self.cpu_start:
            if name.startswith("_"):
                continue
            if name in self.cpu_end:
                used = self.cpu_end[name] - self.cpu_start[name]
                cpu[name] = {
                    "cpu_s": round(used, 3),
                    "util": round(used / wall, 3),
                    "ms_per_req": round(used * 1000 / done, 4) if done else None,
                }
        out["cpu"] = cpu
        return out


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    values.sort()
    n = len(values)

    def pct(p: float) -> float:
        return round(values[min(n - 1, max(0, int(p * n + 0.999999) - 1))], 3)

    return {
        "n": n,
        "mean": round(sum(values) / n, 3),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "max": round(values[-1], 3),
    }


class OpenPhase(Phase):
    """Fixed offered rate; latency from each request's due time."""

    def __init__(self, spec: dict) -> None:
        super().__init__(spec)
        self.rate = float(spec["rate"])
        self.max_conns = int(spec.get("max_conns", 512))
        self.total = int(self.rate * (self.warmup + self.duration))
        self.first_measured = int(self.rate * self.warmup)
        self.idle: deque[Conn] = deque()
        self.waiting: deque[Req] = deque()
        self.opening = 0
        self.outstanding = 0
        self.scheduled = 0
        self.measured_outstanding = 0
        self.stop = threading.Event()
        self.finished_at = 0.0
        self.scheduled_done = False

    async def run(self) -> dict:
        # a small warm pool, so the first requests do not pay for connects
        for conn in await asyncio.gather(*(self.connect() for _ in range(int(self.spec.get("pool", 8))))):
            self.idle.append(conn)
        t0 = perf_counter() + 0.05
        interval = 1.0 / self.rate
        thread = threading.Thread(target=self._ticker, args=(t0, interval), daemon=True)
        thread.start()
        limit = self.warmup + self.duration + self.grace + 2.0
        try:
            await asyncio.wait_for(self.drained.wait(), timeout=limit)
        except TimeoutError:
            pass
        self.stop.set()
        thread.join(timeout=2)
        if not self.cpu_end:
            self.cpu_end = self.snapshot()
            self.finished_at = perf_counter()
        self.window = (t0 + self.first_measured * interval, self.finished_at)
        self.close()
        return self.result(self.total - self.first_measured)

    def _ticker(self, t0: float, interval: float) -> None:
        """Mark each request due at ``t0 + i * interval``, precisely (a thread sleeps; the loop sends)."""
        call = self.loop.call_soon_threadsafe
        for i in range(self.total):
            due = t0 + i * interval
            while True:
                delay = due - perf_counter()
                if delay <= 0 or self.stop.is_set():
                    break
                time.sleep(delay)
            if self.stop.is_set():
                return
            call(self._fire, i, due)
        call(self._scheduled_all)

    def _fire(self, i: int, due: float) -> None:
        measured = i >= self.first_measured
        if i == self.first_measured:
            self.cpu_start = self.snapshot()
        req = Req(due, measured)
        self.outstanding += 1
        self.scheduled += 1
        conn = self._idle_conn()
        if conn is not None:
            conn.send(req)
        elif self._live() + self.opening < self.max_conns:
            self.opening += 1
            self.loop.create_task(self._open_and_send(req))
        else:
            self.waiting.append(req)

    def _idle_conn(self) -> Conn | None:
        """The most recently used idle connection still open (the server may close one idle for long)."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                return conn
        return None

    def _live(self) -> int:
        return sum(1 for conn in self.conns if not conn.lost)

    async def _open_and_send(self, req: Req) -> None:
        try:
            conn = await self.connect()
        except OSError:
            self.opening -= 1
            self.errors += 1
            req.end = perf_counter()
            self._finish(req)
            return
        self.opening -= 1
        conn.send(req)

    def _scheduled_all(self) -> None:
        self.scheduled_done = True
        self._check_drained()

    def _check_drained(self) -> None:
        if self.scheduled_done and self.outstanding == 0 and not self.drained.is_set():
            self.finished_at = perf_counter()
            self.cpu_end = self.snapshot()
            self.drained.set()

    def _finish(self, req: Req) -> None:
        self.outstanding -= 1
        if req.measured:
            self.records.append(req)
        self._check_drained()

    def completed(self, conn: Conn, req: Req) -> None:
        if not conn.lost:
            if self.waiting:
                conn.send(self.waiting.popleft())
            else:
                self.idle.append(conn)
        elif self.waiting and self._live() + self.opening < self.max_conns:
            self.opening += 1
            self.loop.create_task(self._open_and_send(self.waiting.popleft()))
        self._finish(req)


class ClosedPhase(Phase):
    """``concurrency`` connections, each sending again as soon as it is answered."""

    def __init__(self, spec: dict) -> None:
        super().__init__(spec)
        self.concurrency = int(spec["concurrency"])
        self.start = self.end = 0.0
        self.in_window = 0
        self.active = 0

    async def run(self) -> dict:
        conns = await asyncio.gather(*(self.connect() for _ in range(self.concurrency)))
        now = perf_counter()
        self.start = now + self.warmup
        self.end = self.start + self.duration
        self.loop.call_later(self.warmup, self._begin)
        self.loop.call_later(self.warmup + self.duration, self._finish_window)
        for conn in conns:
            self.active += 1
            conn.send(Req(0.0, False))
        try:
            await asyncio.wait_for(self.drained.wait(), timeout=self.warmup + self.duration + self.grace)
        except TimeoutError:
            pass
        if not self.cpu_end:
            self.cpu_end = self.snapshot()
            self.end = perf_counter()
        self.window = (self.start, self.end)
        self.close()
        return self.result(len(self.records), self.in_window)

    def _begin(self) -> None:
        self.start = perf_counter()
        self.cpu_start = self.snapshot()

    def _finish_window(self) -> None:
        self.end = perf_counter()
        self.cpu_end = self.snapshot()
        if self.active == 0:
            self.drained.set()

    def completed(self, conn: Conn, req: Req) -> None:
        now = req.end
        if self.cpu_start and not self.cpu_end:
            self.in_window += 1
            if req.sent >= self.start:
                req.measured = True
                self.records.append(req)
        if self.cpu_end or conn.lost:
            self.active -= 1
            if conn.lost and not self.cpu_end:  # replace a dropped connection
                self.active += 1
                self.loop.create_task(self._reconnect())
            elif self.active == 0 and self.cpu_end:
                self.drained.set()
            return
        conn.send(Req(now, False))

    async def _reconnect(self) -> None:
        try:
            conn = await self.connect()
        except OSError:
            self.active -= 1
            return
        conn.send(Req(perf_counter(), False))


async def run_phase(spec: dict) -> dict:
    phase = OpenPhase(spec) if spec["mode"] == "open" else ClosedPhase(spec)
    started = perf_counter()
    result = await phase.run()
    result["elapsed_s"] = round(perf_counter() - started, 3)
    return result


def main() -> None:
    sys.setswitchinterval(0.0005)  # the ticker thread gets the GIL promptly when the loop is busy
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        spec = json.loads(line)
        try:
            result = uvloop.run(run_phase(spec))
        except Exception as exc:  # report, keep serving phases
            result = {"spec": spec, "failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
