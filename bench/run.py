"""mux benchmark: one command starts a fake OpenAI upstream, the gateway, a bare pass-through proxy and a load
generator (each its own process), measures latency at fixed offered rates, throughput at saturation, CPU
time per request and peak memory, prints a table and writes JSON to bench/results/.

    python bench/run.py                    # the default run (about 2.5 minutes)
    python bench/run.py --quick            # a smoke run (under a minute)
    python bench/run.py --compare-clients  # also the pass-through (and mux) over httpx, at saturation
    python bench/run.py --variants money-sqlite,money-redis,ledger  # also mux with keys/budgets/limits, ledger

See bench/README.md for what is measured and how to read the output.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
PY = sys.executable
sys.path.insert(0, HERE)

# The targets to meet (see README): mux / pass-through throughput at saturation, added latency over direct at
# the first offered rate, mux CPU per non-streaming request, mux peak RSS.
GOALS = {
    "throughput_ratio": 0.50,
    "added_p50_ms": 1.0,
    "added_p99_ms": 5.0,
    "cpu_ms_per_req": 0.5,
    "peak_rss_mb": 120.0,
}
# The variants' targets (--variants): throughput at saturation over the pass-through's (money-*), over plain
# mux's (ledger).
VARIANT_GOALS = {"money-sqlite": ("pass", 0.45), "money-redis": ("pass", 0.40), "ledger": ("mux", 0.95)}
VARIANTS = ("money-memory", "money-sqlite", "money-redis", "ledger")


# --- processes -------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _child_setup(cpus: set[int] | None):
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # die with the runner, even if it is killed
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class Procs:
    """Every process the run starts; all are stopped on exit, Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(
        self, name: str, argv: list[str], *, cpus: set[int] | None, stdin=None, stdout=None, stderr=None
    ) -> subprocess.Popen:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=_child_setup(cpus),
        )
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"process {name} exited early with status {proc.returncode}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def mux_source(ref: str | None, tmp: str) -> tuple[str, dict]:
    """Answer the directory holding the mux package to benchmark, and a description of its revision."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", ROOT, *argv], capture_output=True, text=True, check=True).stdout.strip()

    if ref is None:
        try:
            head = git("rev-parse", "--short", "HEAD")
            dirty = bool(git("status", "--porcelain", "--", "mux"))
        except (OSError, subprocess.CalledProcessError):
            head, dirty = "unknown", True
        return ROOT, {
            "ref": None,
            "commit": head,
            "dirty": dirty,
            "describe": f"the working tree ({head}{', mux/ modified' if dirty else ''})",
        }
    commit = git("rev-parse", "--short", ref)
    target = os.path.join(tmp, f"src-{commit}")
    os.makedirs(target, exist_ok=True)
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "mux"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target, {"ref": ref, "commit": commit, "dirty": False, "describe": f"{ref} ({commit})"}


def other_load(sample: float = 0.25) -> float:
    """Cores busy over ``sample`` seconds while the benchmark's own processes are idle: other tenants' load."""
    from loadgen import machine_cpu

    before = machine_cpu()[0]
    time.sleep(sample)
    return (machine_cpu()[0] - before) / sample


def wait_quiet(limit: float, budget: float) -> float:
    """Wait (at most ``budget`` seconds) until other processes use less than ``limit`` cores; answer the wait."""
    started = time.monotonic()
    while other_load() > limit and time.monotonic() - started < budget:
        pass
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, procs: Procs, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


# --- smoke check -----------------------------------------------------------------------------------------


def smoke(port: int, name: str, variant: str | None = None) -> int:
    """One non-streaming and one streaming request, checked for shape, before any load; for a ``money-*``
    variant, also that its budget and rate limit answer their headers and that a request without the key is
    refused (401). Answer the number of requests sent."""
    from loadgen import CLIENT_KEY, request_body

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    money = bool(variant and variant.startswith("money-"))
    for stream in (False, True):
        req = urllib.request.Request(
            url,
            data=request_body(stream),
            method="POST",
            headers={"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"},
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            body = response.read()
            headers = response.headers
        if stream:
            events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
            if events[-1] != b"[DONE]" or len(events) < 4:
                raise RuntimeError(f"{name}: the stream is malformed: {body[:200]!r}")
            chunks = [json.loads(e) for e in events[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            if not text or chunks[-1].get("usage") is None:
                raise RuntimeError(f"{name}: the stream lacks content or its usage chunk")
        else:
            data = json.loads(body)
            if not data["choices"][0]["message"]["content"] or not data.get("usage"):
                raise RuntimeError(f"{name}: the completion lacks content or usage: {body[:200]!r}")
        if name.startswith("mux") and not headers.get("x-mux-request-id"):
            raise RuntimeError(f"{name}: no x-mux-request-id header")
        if money:
            for header in ("x-mux-budget-name", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"):
                if not headers.get(header):
                    raise RuntimeError(f"{name}: no {header} header: its budget or rate limit is not on")
    if not money:
        return 2
    req = urllib.request.Request(
        url, data=request_body(False), method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raise RuntimeError(f"{name}: a request without a key was answered {response.status}, not 401")
    except urllib.error.HTTPError as error:
        if error.code != 401:
            raise RuntimeError(f"{name}: a request without a key was answered {error.code}, not 401") from None
    return 3


# --- checks after the load -------------------------------------------------------------------------------


def read_log(path: str, smoke_401: bool) -> tuple[int, dict[str, dict]]:
    """Answer the number of request records in a mux log, and what else it holds: answers other than 200 by
    ``"<status> <error>"`` (less the smoke check's one expected refusal, ``smoke_401``) and warning or error
    events by ``"<level> <event>"``, each with its count and its first record's ``error`` field."""
    requests = 0
    problems: Counter = Counter()
    first: dict[str, str] = {}
    with open(path, "rb") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                text = line[:200].decode(errors="replace")
                record = {"event": "unreadable log line", "level": "error", "error": text}
            if record.get("event") == "request":
                requests += 1
                if record.get("status") == 200:
                    continue
                what = f"{record.get('status')} {record.get('error', '-')}"
            elif record.get("level") in ("warning", "error", "critical"):
                what = f"{record['level']} {record.get('event')}"
            else:
                continue
            problems[what] += 1
            first.setdefault(what, str(record.get("error", "")))
    if smoke_401:
        problems.subtract({"401 invalid_api_key": 1})
    return requests, {what: {"count": n, "first_error": first[what]} for what, n in problems.items() if n}


def ledger_rows(path: str, requests: int, wait: float = 5.0) -> dict:
    """Answer the rows in a ledger file against the requests answered, once they match or ``wait`` seconds
    passed (the writer flushes every few ms)."""
    import sqlite3

    deadline = time.monotonic() + wait
    rows = -1
    while True:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as db:
                rows = db.execute("SELECT count(*) FROM ledger").fetchone()[0]
        except sqlite3.Error:
            pass
        if rows >= requests or time.monotonic() > deadline:
            return {"rows": rows, "requests": requests}
        time.sleep(0.1)


# --- load generator --------------------------------------------------------------------------------------


class LoadGen:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def run(self, spec: dict) -> dict:
        self.proc.stdin.write((json.dumps(spec) + "\n").encode())
        self.proc.stdin.flush()
        limit = spec.get("warmup", 1) + spec["duration"] + spec.get("grace", 5) + 15
        ready, _, _ = select.select([self.proc.stdout], [], [], limit)
        if not ready:
            raise RuntimeError(f"the load generator did not answer within {limit:.0f}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited")
        result = json.loads(line)
        if "failed" in result:
            raise RuntimeError(f"phase failed: {result['failed']}")
        return result


# --- the run ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description="mux benchmark")
    parser.add_argument("--quick", action="store_true", help="short phases, one rate (under a minute)")
    parser.add_argument(
        "--duration",
        type=float,
        help="measured seconds per target at each fixed rate, split over the rounds (default 6)",
    )
    parser.add_argument(
        "--sat-duration",
        type=float,
        help="measured seconds per target at saturation, split over the rounds (default 5)",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds every measurement is split into (default 2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each phase (default 0.5)")
    parser.add_argument(
        "--noise-limit",
        type=float,
        default=0.25,
        help="a phase during which other processes used more CPU than this many cores is run "
        "again at the end, and the calmer run kept (default 0.25)",
    )
    parser.add_argument("--retries", type=int, default=6, help="at most this many phases run again (default 6)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=3.0,
        help="before each phase, wait up to this many seconds for other processes to calm down "
        "below --noise-limit (default 3)",
    )
    parser.add_argument(
        "--quiet-budget", type=float, default=30.0, help="total seconds of such waiting in a run (default 30)"
    )
    parser.add_argument("--rates", help="offered rates in requests/s, comma-separated (default 200,500)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections at saturation (default 64)")
    parser.add_argument("--modes", default="json,stream", help="json, stream or both (default both)")
    parser.add_argument("--targets", default="direct,pass,mux", help="which of direct, pass, mux to load (default all)")
    parser.add_argument("--no-open", action="store_true", help="skip the fixed-rate phases (saturation only)")
    parser.add_argument(
        "--compare-clients",
        action="store_true",
        help="also run the pass-through over httpx (tuned pool and default limits) and mux over "
        "HttpxTransport, at saturation",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="also run mux with these configs, each as target mux-<variant>, at saturation: "
        f"{', '.join(VARIANTS)} (comma-separated; see README)",
    )
    parser.add_argument("--variant-rates", action="store_true", help="also measure the --variants at the fixed rates")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/15",
        help="money-redis: the Redis database of its state, under a prefix of the run's own "
        "(default redis://127.0.0.1:6379/15)",
    )
    parser.add_argument(
        "--chunk-gap-ms", type=float, default=1.0, help="the fake upstream's pause between stream events (default 1)"
    )
    parser.add_argument(
        "--pin",
        choices=("auto", "off"),
        default="auto",
        help="auto: servers under test on the last CPU, fake and load generator on the others",
    )
    parser.add_argument(
        "--profile",
        metavar="SECONDS",
        type=float,
        default=0,
        help="after the run, record mux (and its --variants) and the pass-through at saturation "
        "with py-spy for SECONDS each (needs py-spy on PATH)",
    )
    parser.add_argument("--ref", help="benchmark mux as committed at this git ref (default: the working tree)")
    parser.add_argument(
        "--baseline", metavar="REF", help="also run mux as committed at REF (target mux-base) at saturation, to compare"
    )
    parser.add_argument(
        "--gc-tune",
        action="store_true",
        help="run every server with gc.freeze() and gc.set_threshold(50000, 50, 100), the tuning the standalone "
        "gateway applies to itself (server.gc_tune), so the pass-through and --baseline get it too (see README)",
    )
    parser.add_argument("--skip-load", action="store_true", help="no measurement phases (e.g. only --profile)")
    parser.add_argument("--out", default=RESULTS, help="directory for the JSON results (default bench/results)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 6.0)
    args.sat_duration = args.sat_duration or (2.5 if quick else 5.0)
    args.rounds = args.rounds or (1 if quick else 2)
    args.warmup = args.warmup if args.warmup is not None else 0.5
    if quick:
        args.retries = min(args.retries, 2)
        args.quiet_budget = min(args.quiet_budget, 8.0)
    args.rates = [float(r) for r in (args.rates or ("200" if quick else "200,500")).split(",") if r]
    args.modes = [m for m in args.modes.split(",") if m]
    args.targets = [t for t in args.targets.split(",") if t]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}: choose among {', '.join(VARIANTS)}")
    if args.no_open:
        args.rates = []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs = Procs()

    def on_term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (e.g. in the background)
    tmp = tempfile.mkdtemp(prefix="mux-bench-")
    args.state_prefix = f"muxbench:{os.path.basename(tmp)}:"  # money-redis: this run's own Redis keys
    try:
        return _run(args, procs, tmp)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every process", file=sys.stderr)
        return 130
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(args, "redis_used", False):
            _forget_redis(args)


def _forget_redis(args: argparse.Namespace) -> None:
    import asyncio

    from servers import forget_redis_state

    try:
        asyncio.run(forget_redis_state(args.redis_url, args.state_prefix))
    except Exception as exc:  # noqa: BLE001 - cleaning up must not hide the run's outcome
        print(f"could not delete the run's Redis state under {args.state_prefix}: {exc}", file=sys.stderr)


def redis_answers(url: str) -> str | None:
    """Answer why Redis at ``url`` cannot serve money-redis, or None when it answers PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - reported
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _run(args: argparse.Namespace, procs: Procs, tmp: str) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin == "auto" and len(cpus) >= 2:
        server_cpus, driver_cpus = {cpus[-1]}, set(cpus[:-1])
    else:
        server_cpus = driver_cpus = None
    started = time.monotonic()
    source, revision = mux_source(args.ref, tmp)
    sources = {"mux": source, "mux-httpx": source}
    if args.baseline:
        sources["mux-base"], baseline = mux_source(args.baseline, tmp)

    fake_port = free_port()
    procs.start(
        "fake",
        [
            PY,
            os.path.join(HERE, "fake_upstream.py"),
            "--port",
            str(fake_port),
            "--chunk-gap-ms",
            str(args.chunk_gap_ms),
        ],
        cpus=driver_cpus,
    )
    upstream = f"http://127.0.0.1:{fake_port}"

    if "money-redis" in args.variants:
        why = redis_answers(args.redis_url)
        if why:
            raise SystemExit(f"money-redis needs Redis at {args.redis_url} (--redis-url): {why}")
        args.redis_used = True  # its keys are deleted at the end
    servers = [("pass", "pass", "aiohttp"), ("mux", "mux", "aiohttp")]
    if args.baseline:
        servers.append(("mux-base", "mux", "aiohttp"))
    if args.compare_clients:
        servers += [
            ("pass-httpx", "pass", "httpx"),
            ("pass-httpx-default", "pass", "httpx-default"),
            ("mux-httpx", "mux", "httpx"),
        ]
    variants = {f"mux-{v}": v for v in args.variants}
    servers += [(name, "mux", "aiohttp") for name in variants]
    ports = {"direct": fake_port}
    logs = {}
    state_dirs = {}
    for name, kind, client in servers:
        port = free_port()
        argv = [
            PY,
            os.path.join(HERE, "servers.py"),
            kind,
            "--port",
            str(port),
            "--upstream",
            upstream,
            "--client",
            client,
        ] + (["--gc-tune"] if args.gc_tune else [])
        if kind == "mux":
            logs[name] = os.path.join(tmp, f"{name}.log")
            argv += ["--log-file", logs[name], "--mux-source", sources.get(name, source)]
        if name in variants:
            state_dirs[name] = os.path.join(tmp, name)
            os.makedirs(state_dirs[name])
            argv += [
                "--variant",
                variants[name],
                "--state-dir",
                state_dirs[name],
                "--redis-url",
                args.redis_url,
                "--state-prefix",
                args.state_prefix,
            ]
        procs.start(name, argv, cpus=server_cpus)
        ports[name] = port
    loadgen = LoadGen(
        procs.start(
            "loadgen",
            [PY, os.path.join(HERE, "loadgen.py")],
            cpus=driver_cpus,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    )
    for port in ports.values():
        wait_listening(port, procs)
    answered = {name: smoke(port, name, variants.get(name)) for name, port in ports.items()}
    pids = {name: procs.procs[name].pid for name in ports if name != "direct"}
    pids_all = {**pids, "fake": procs.procs["fake"].pid}
    rss_idle = {name: proc_status(pid)["VmRSS"] for name, pid in pids.items()}
    base = f" against {baseline['describe']}" if args.baseline else ""
    if variants:
        base += f"; variants {', '.join(variants)}{' (also at the fixed rates)' if args.variant_rates else ''}"
    print(
        f"mux benchmark of {revision['describe']}{base}: {len(cpus)} CPUs, servers on "
        f"{sorted(server_cpus) if server_cpus else 'any'}, fake and load generator on "
        f"{sorted(driver_cpus) if driver_cpus else 'any'}; "
        f"rates {', '.join(f'{r:g}' for r in args.rates)}/s for {args.duration:g}s, saturation "
        f"c={args.concurrency} for {args.sat_duration:g}s, in {args.rounds} round(s)"
        f"{'; servers with --gc-tune' if args.gc_tune else ''}",
        flush=True,
    )

    main_targets = [t for t in ("direct", "pass", "mux") if t in args.targets]
    extra = [n for n, _, _ in servers[2:]]
    open_targets = main_targets + (list(variants) if args.variant_rates else [])
    groups = []
    for mode in args.modes:
        stream = mode == "stream"
        for rate in args.rates:
            groups.append(({"mode": "open", "stream": stream, "rate": rate}, args.duration, open_targets))
        groups.append(
            (
                {"mode": "closed", "stream": stream, "concurrency": args.concurrency},
                args.sat_duration,
                main_targets + extra,
            )
        )
    total = sum(len(targets) for _, _, targets in groups) * args.rounds
    statuses: dict[str, Counter] = {name: Counter() for name in ports}  # the load's answers, by HTTP status
    cells: dict[tuple, list[dict]] = {}
    disturbed: list[tuple[tuple, int, dict, dict]] = []

    waited = [0.0]

    def run_phase(phase: dict, counter: str) -> dict:
        # let a burst of other processes' work pass first (bounded per phase and per run)
        budget = min(args.quiet_wait, args.quiet_budget - waited[0])
        if budget > 0:
            waited[0] += wait_quiet(args.noise_limit, budget)
        target = phase["target"]
        spec = {
            **phase,
            "port": ports[target],
            "warmup": args.warmup,
            "grace": 5.0,
            "samples": True,
            "watch": {**({target: pids[target]} if target in pids else {}), "fake": pids_all["fake"]},
        }
        procs.check()
        result = loadgen.run(spec)
        answered[target] += result["answered"]
        statuses[target].update(result.get("statuses", {}))
        result["target"] = target
        other = result.get("machine", {}).get("other_cores", 0.0)
        note = f"  (other processes used {other:.2f} cores)" if other > args.noise_limit else ""
        print(
            f"  [{counter}] {_label(phase):<32} {result['throughput_rps']:>8.0f} rps  "
            f"p50 {result['latency_ms'].get('p50', float('nan')):7.2f} ms  "
            f"p99 {result['latency_ms'].get('p99', float('nan')):7.2f} ms  "
            f"errors {result['errors'] + result['timeouts']}{note}",
            flush=True,
        )
        return result

    index = 0
    for round_ in range(0 if args.skip_load else args.rounds):
        for load, duration, targets in groups:
            for target in targets if round_ % 2 == 0 else targets[::-1]:  # alternate who goes first
                index += 1
                phase = {**load, "target": target, "duration": duration / args.rounds}
                key = (target, load["mode"], load["stream"], load.get("rate"), load.get("concurrency"))
                result = run_phase(phase, f"{index:2d}/{total}")
                cells.setdefault(key, []).append(result)
                if result.get("machine", {}).get("other_cores", 0.0) > args.noise_limit:
                    disturbed.append((key, len(cells[key]) - 1, phase, result))
    # phases disturbed by other processes run again at the end (noise often passes); the calmer run is kept
    disturbed.sort(key=lambda d: -d[3]["machine"]["other_cores"])
    for n, (key, slot, phase, result) in enumerate(disturbed[: args.retries], 1):
        again = run_phase(phase, f"again {n}/{min(len(disturbed), args.retries)}")
        if again["machine"]["other_cores"] < result["machine"]["other_cores"]:
            cells[key][slot] = again
    results = [merge(rounds) for rounds in cells.values()]

    memory = {
        name: {"idle_rss_mb": rss_idle[name], "peak_rss_mb": proc_status(pid)["VmHWM"]} for name, pid in pids.items()
    }
    log_lines = {}
    log_problems = {}
    for name, path in logs.items():
        log_lines[name], log_problems[name] = read_log(path, smoke_401=variants.get(name, "").startswith("money-"))
    ledgers = {
        name: ledger_rows(os.path.join(state_dirs[name], "ledger.db"), answered[name])
        for name, variant in variants.items()
        if variant == "ledger"
    }
    answers = {
        name: {
            "statuses": dict(sorted(counts.items())),
            "not_200": sum(n for code, n in counts.items() if code != "200"),
            "log_problems": log_problems.get(name, {}),
        }
        for name, counts in statuses.items()
    }

    profile = None
    if args.profile:
        profile = _profile(args, loadgen, ports, pids, tmp)

    elapsed = time.monotonic() - started
    summary = summarize(results, memory, args, answers)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": len(cpus),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg": open("/proc/loadavg").read().split()[:3],
        },
        "args": {k: v for k, v in vars(args).items()},
        "mux": revision,
        "baseline": baseline if args.baseline else None,
        "pinning": {
            "servers": sorted(server_cpus) if server_cpus else None,
            "drivers": sorted(driver_cpus) if driver_cpus else None,
        },
        "cells": results,
        "memory": memory,
        "mux_log_lines": {name: {"lines": log_lines[name], "requests": answered[name]} for name in log_lines},
        "answers": answers,
        "ledger_rows": ledgers,
        "summary": summary,
        "profile": profile,
        "elapsed_s": round(elapsed, 1),
        "waited_for_quiet_s": round(waited[0], 1),
    }
    print()
    print(render(results, memory, report["mux_log_lines"], summary, args, answers, ledgers))
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"bench-{stamp}{'-quick' if args.quick else ''}.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)
    if profile:
        print(render_profile(profile))
    print(f"\nresults: {os.path.relpath(path)}  ({elapsed:.0f}s)")
    return 0


def _profile(args, loadgen: LoadGen, ports, pids, tmp) -> dict:
    """Record mux, its variants and the pass-through with py-spy while a closed loop saturates each; answer the
    hottest functions and modules of each."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
    if not os.path.exists(spy):
        print("--profile needs py-spy on PATH (pip install py-spy)", file=sys.stderr)
        return {"error": "py-spy not found"}
    os.makedirs(args.out, exist_ok=True)
    out = {}
    for mode in args.modes:
        for target in ("pass", "mux", *(f"mux-{v}" for v in args.variants)):
            raw = os.path.join(args.out, f"profile-{target}-{mode}.txt")
            recorder = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pids[target]),
                    "--duration",
                    str(int(args.profile)),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--function",
                    "--output",
                    raw,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            result = loadgen.run(
                {
                    "target": target,
                    "port": ports[target],
                    "mode": "closed",
                    "stream": mode == "stream",
                    "concurrency": args.concurrency,
                    "warmup": 0.5,
                    "duration": args.profile + 1.0,
                    "watch": {target: pids[target]},
                }
            )
            recorder.wait(timeout=30)
            if recorder.returncode != 0 or not os.path.exists(raw):
                out[f"{target} {mode}"] = {"error": f"py-spy exited with {recorder.returncode} (ptrace allowed?)"}
                continue
            out[f"{target} {mode}"] = {
                "raw": os.path.relpath(raw),
                "rps": result["throughput_rps"],
                "cpu_ms_per_req": result["cpu"][target]["ms_per_req"],
                **hot_spots(raw),
            }
    return out


def hot_spots(path: str, top: int = 25) -> dict:
    """Summarize py-spy collapsed stacks: self and inclusive share per function, inclusive share per package."""
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    pkg: dict[str, int] = {}
    pkg_self: dict[str, int] = {}
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            self_[frames[-1]] = self_.get(frames[-1], 0) + n
            own = _package(frames[-1])
            pkg_self[own] = pkg_self.get(own, 0) + n
            for frame in set(frames):
                incl[frame] = incl.get(frame, 0) + n
            for name in {_package(f) for f in frames}:
                pkg[name] = pkg.get(name, 0) + n

    def share(d):
        return [(k, round(v / total, 4)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "self": share(self_),
        "inclusive": share(incl),
        "packages_inclusive": share(pkg),
        "packages_self": share(pkg_self),
    }


def _package(frame: str) -> str:
    """``mux/dispatch`` for mux's modules, the top-level package (``aiohttp``, ``asyncio``...) for the rest."""
    where = frame[frame.rfind("(") + 1 :].rstrip(")").split(":")[0]
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3.":
                where = where.split("/", 1)[-1]
    if "/mux/" in where:
        where = "mux/" + where.rsplit("/mux/", 1)[1]
    if where.startswith("mux/"):
        return where.removesuffix(".py")
    return where.split("/")[0].removesuffix(".py") or "?"


# --- merging rounds ---------------------------------------------------------------------------------------


def merge(rounds: list[dict]) -> dict:
    """One cell (target x mode x load) from its rounds: samples pooled, CPU and completions summed."""
    from loadgen import _stats

    first = rounds[0]
    completed = sum(r["completed"] for r in rounds)
    wall = sum(r["window_s"] for r in rounds)
    spec = {k: v for k, v in first["spec"].items() if k in ("mode", "stream", "rate", "concurrency", "warmup")}
    spec["duration"] = round(sum(r["spec"]["duration"] for r in rounds), 3)
    out = {
        "target": first["target"],
        "spec": spec,
        "rounds": len(rounds),
        "completed": completed,
        "ok": sum(r["ok"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "timeouts": sum(r["timeouts"] for r in rounds),
        "window_s": round(wall, 3),
        "throughput_rps": round(completed / wall, 1),
        "throughput_rounds": [r["throughput_rps"] for r in rounds],
        "connections": max(r["connections"] for r in rounds),
    }
    if spec["mode"] == "open":
        for name, key in (
            ("latency", "latency_ms"),
            ("ttfb", "ttfb_ms"),
            ("service", "service_ms"),
            ("lag", "send_lag_ms"),
        ):
            values = [v for r in rounds for v in r.get("samples", {}).get(name, ())]
            if values or name != "ttfb":
                out[key] = _stats(values)
    else:  # per-request samples are not kept at saturation: the round nearest the mean throughput speaks
        mean = out["throughput_rps"]
        typical = min(rounds, key=lambda r: abs(r["throughput_rps"] - mean))
        out["latency_ms"] = typical["latency_ms"]
        if "ttfb_ms" in typical:
            out["ttfb_ms"] = typical["ttfb_ms"]
    cpu = {}
    for name in first["cpu"]:
        used = sum(r["cpu"].get(name, {}).get("cpu_s", 0.0) for r in rounds)
        cpu[name] = {
            "cpu_s": round(used, 3),
            "util": round(used / wall, 3),
            "ms_per_req": round(used * 1000 / completed, 4) if completed else None,
        }
    out["cpu"] = cpu
    machine = [r["machine"] for r in rounds if "machine" in r]
    if machine:
        out["machine"] = {
            "other_cores_max": max(m["other_cores"] for m in machine),
            "steal_cores_max": max(m["steal_cores"] for m in machine),
        }
    return out


# --- summary and table -----------------------------------------------------------------------------------


def _label(phase: dict) -> str:
    mode = "stream" if phase["stream"] else "json"
    load = f"@{phase['rate']:g}/s" if phase["mode"] == "open" else f"sat c={phase['concurrency']}"
    return f"{mode:<6} {phase['target']:<19} {load}"


def _find(results, target, stream, mode, rate=None):
    for r in results:
        s = r["spec"]
        if (
            r["target"] == target
            and s["stream"] == stream
            and s["mode"] == mode
            and (rate is None or s.get("rate") == rate)
        ):
            return r
    return None


def summarize(results: list[dict], memory: dict, args, answers: dict | None = None) -> dict:
    out: dict = {}
    rate = args.rates[0] if args.rates else None
    answers = answers or {}
    variants = [f"mux-{v}" for v in args.variants]
    for mode in args.modes:
        stream = mode == "stream"
        sat = {
            t: _find(results, t, stream, "closed")
            for t in ("direct", "pass", "mux", "mux-base", "pass-httpx", "pass-httpx-default", "mux-httpx", *variants)
        }
        entry: dict = {}
        if sat["mux"] and sat["pass"]:
            entry["throughput_rps"] = {t: r["throughput_rps"] for t, r in sat.items() if r}
            entry["throughput_ratio_mux_over_pass"] = round(
                sat["mux"]["throughput_rps"] / sat["pass"]["throughput_rps"], 3
            )
            entry["cpu_ms_per_req_at_saturation"] = cpu = {
                t: r["cpu"][t]["ms_per_req"] for t, r in sat.items() if r and t in r["cpu"]
            }
            # requests per CPU-second, relative: what the throughput ratio is when both saturate one core, and
            # much less disturbed by other processes than wall-clock throughput
            if cpu.get("mux") and cpu.get("pass"):
                entry["capacity_ratio_mux_over_pass"] = round(cpu["pass"] / cpu["mux"], 3)
        for r_ in args.rates:
            direct = _find(results, "direct", stream, "open", r_)
            per = {}
            for target in ("pass", "mux"):
                res = _find(results, target, stream, "open", r_)
                if not (direct and res and res["latency_ms"].get("n") and direct["latency_ms"].get("n")):
                    continue
                item = {
                    "added_p50_ms": round(res["latency_ms"]["p50"] - direct["latency_ms"]["p50"], 3),
                    "added_p99_ms": round(res["latency_ms"]["p99"] - direct["latency_ms"]["p99"], 3),
                    "cpu_ms_per_req": res["cpu"].get(target, {}).get("ms_per_req"),
                }
                if stream:
                    item["added_ttfb_p50_ms"] = round(res["ttfb_ms"]["p50"] - direct["ttfb_ms"]["p50"], 3)
                    item["added_ttfb_p99_ms"] = round(res["ttfb_ms"]["p99"] - direct["ttfb_ms"]["p99"], 3)
                per[target] = item
            entry[f"at_{r_:g}_rps"] = per
        if variants:
            entry["variants"] = {name: variant_ratios(sat, name) for name in variants if sat[name]}
        out[mode] = entry
    checks = []
    json_entry = out.get("json", {})
    if "throughput_ratio_mux_over_pass" in json_entry:
        checks.append(
            (
                "mux/pass-through throughput at saturation (json)",
                json_entry["throughput_ratio_mux_over_pass"],
                GOALS["throughput_ratio"],
                ">=",
                "{:.0%}",
            )
        )
    if "capacity_ratio_mux_over_pass" in json_entry:
        checks.append(
            (
                "  same, from CPU per request (noise-robust)",
                json_entry["capacity_ratio_mux_over_pass"],
                GOALS["throughput_ratio"],
                ">=",
                "{:.0%}",
            )
        )
    if "stream" in out and "throughput_ratio_mux_over_pass" in out["stream"]:
        checks.append(
            (
                "mux/pass-through throughput at saturation (stream)",
                out["stream"]["throughput_ratio_mux_over_pass"],
                GOALS["throughput_ratio"],
                ">=",
                "{:.0%}",
            )
        )
        if "capacity_ratio_mux_over_pass" in out["stream"]:
            checks.append(
                (
                    "  same, from CPU per request (noise-robust)",
                    out["stream"]["capacity_ratio_mux_over_pass"],
                    GOALS["throughput_ratio"],
                    ">=",
                    "{:.0%}",
                )
            )
    at = json_entry.get(f"at_{rate:g}_rps", {}).get("mux") if rate else None
    if at:
        checks.append(
            (
                f"mux added p50 over direct @{rate:g}/s (json)",
                at["added_p50_ms"],
                GOALS["added_p50_ms"],
                "<=",
                "{:+.2f} ms",
            )
        )
        checks.append(
            (
                f"mux added p99 over direct @{rate:g}/s (json)",
                at["added_p99_ms"],
                GOALS["added_p99_ms"],
                "<=",
                "{:+.2f} ms",
            )
        )
        floor = json_entry.get(f"at_{rate:g}_rps", {}).get("pass", {}).get("cpu_ms_per_req")
        checks.append(
            (
                f"mux CPU per json request @{rate:g}/s",
                at["cpu_ms_per_req"],
                GOALS["cpu_ms_per_req"],
                "<=",
                "{:.3f} ms",
                floor,
            )
        )
    sat_cpu = json_entry.get("cpu_ms_per_req_at_saturation", {}).get("mux")
    if sat_cpu is not None:
        floor = json_entry.get("cpu_ms_per_req_at_saturation", {}).get("pass")
        checks.append(
            ("mux CPU per json request at saturation", sat_cpu, GOALS["cpu_ms_per_req"], "<=", "{:.3f} ms", floor)
        )
    if "mux" in memory:
        checks.append(("mux peak RSS", memory["mux"]["peak_rss_mb"], GOALS["peak_rss_mb"], "<=", "{:.0f} MB"))
    for name in variants:  # void: a figure counting refusals, failures or skipped work (fail open) proves nothing
        over, goal = VARIANT_GOALS.get(name.removeprefix("mux-"), (None, None))
        bad = any(answers.get(t, {}).get("not_200") or answers.get(t, {}).get("log_problems") for t in (name, over))
        for mode in args.modes:
            ratios = out.get(mode, {}).get("variants", {}).get(name, {})
            if over is None or f"throughput_over_{over}" not in ratios:
                continue
            what = f"{name}/{'pass-through' if over == 'pass' else over} throughput at saturation ({mode})"
            checks.append((what, ratios[f"throughput_over_{over}"], goal, ">=", "{:.0%}", None, bad))
            if f"capacity_over_{over}" in ratios:
                checks.append(
                    (
                        "  same, from CPU per request (noise-robust)",
                        ratios[f"capacity_over_{over}"],
                        goal,
                        ">=",
                        "{:.0%}",
                        None,
                        bad,
                    )
                )
    out["checks"] = [
        {
            "what": c[0],
            "value": c[1],
            "goal": c[2],
            "op": c[3],
            "fmt": c[4],
            "floor": c[5] if len(c) > 5 else None,
            "void": len(c) > 6 and c[6],
            "met": not (len(c) > 6 and c[6]) and ((c[1] >= c[2]) if c[3] == ">=" else (c[1] <= c[2])),
        }
        for c in checks
        if c[1] is not None
    ]
    return out


def variant_ratios(sat: dict, name: str) -> dict:
    """A variant's throughput at saturation and its ratios to the pass-through's and plain mux's: from
    throughput, and from CPU per request (what the ratio is when both saturate a core)."""
    mine = sat[name]
    out: dict = {"throughput_rps": mine["throughput_rps"], "cpu_ms_per_req": mine["cpu"][name]["ms_per_req"]}
    for other in ("pass", "mux"):
        theirs = sat.get(other)
        if not theirs:
            continue
        out[f"throughput_over_{other}"] = round(mine["throughput_rps"] / theirs["throughput_rps"], 3)
        cpu, their_cpu = out["cpu_ms_per_req"], theirs["cpu"][other]["ms_per_req"]
        if cpu and their_cpu:
            out[f"capacity_over_{other}"] = round(their_cpu / cpu, 3)
    return out


def render(results, memory, log_lines, summary, args, answers=None, ledgers=None) -> str:
    lines = []
    head = (
        f"{'mode':<6} {'target':<19} {'load':<10} {'rps':>7} {'p50':>6} {'p90':>6} {'p99':>6} "
        f"{'ttfb50':>6} {'ttfb99':>6} {'+p50':>6} {'+p99':>6} {'cpu/req':>7} {'cpu%':>5} {'fake%':>5} "
        f"{'oth%':>5} {'err':>4}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    previous = None
    for r in results:
        s = r["spec"]
        mode = "stream" if s["stream"] else "json"
        load = f"@{s['rate']:g}/s" if s["mode"] == "open" else f"sat c={s['concurrency']}"
        group = (mode, load)
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        lat = r["latency_ms"]
        ttfb = r.get("ttfb_ms", {})
        direct = _find(results, "direct", s["stream"], s["mode"], s.get("rate")) if s["mode"] == "open" else None
        add50 = add99 = ""
        if direct and r["target"] != "direct" and lat.get("n") and direct["latency_ms"].get("n"):
            add50 = f"{lat['p50'] - direct['latency_ms']['p50']:+.2f}"
            add99 = f"{lat['p99'] - direct['latency_ms']['p99']:+.2f}"
        cpu = r["cpu"].get(r["target"], {})
        fake = r["cpu"].get("fake", {})
        spread = ""
        if s["mode"] == "closed" and len(r["throughput_rounds"]) > 1:
            spread = "  rounds " + "/".join(f"{v:.0f}" for v in r["throughput_rounds"])
        lines.append(
            f"{mode:<6} {r['target']:<19} {load:<10} {r['throughput_rps']:>7.0f} {_f(lat.get('p50'))} "
            f"{_f(lat.get('p90'))} {_f(lat.get('p99'))} {_f(ttfb.get('p50'))} {_f(ttfb.get('p99'))} "
            f"{add50:>6} {add99:>6} {_f(cpu.get('ms_per_req'), 7, 3)} {_pct(cpu.get('util'))} "
            f"{_pct(fake.get('util'))} {_pct(r.get('machine', {}).get('other_cores_max'))} "
            f"{r['errors'] + r['timeouts']:>4}{spread}"
        )
    lines.append("")
    lines.append(
        "latency columns in ms (open loop: from each request's due time; saturation: from its send); "
        "+p50/+p99 over direct at the same rate;"
    )
    lines.append(
        "cpu/req = server CPU ms per request (utime+stime); cpu% / fake% = CPU use of the server / the fake "
        "upstream; oth% = CPU used by other"
    )
    lines.append("processes on the machine (worst round), in % of one core.")
    lines.append("")
    mem = "  ".join(f"{n} {m['idle_rss_mb']:.0f}->{m['peak_rss_mb']:.0f} MB" for n, m in memory.items())
    lines.append(f"memory (RSS at start -> peak): {mem}")
    for name, counts in log_lines.items():
        lines.append(
            f"{name} request log: {counts['lines']} request records for {counts['requests']} requests answered"
        )
    for name, ledger in (ledgers or {}).items():
        lines.append(
            f"{name} ledger: {ledger['rows']} rows for {ledger['requests']} requests answered"
            f"{'' if ledger['rows'] == ledger['requests'] else '  MISMATCH'}"
        )
    for name, seen in (answers or {}).items():
        if seen["not_200"] or seen["log_problems"]:
            codes = ", ".join(f"{code}: {n}" for code, n in seen["statuses"].items())
            problems = ", ".join(
                f"{what}: {p['count']} (first: {p['first_error'][:160]!r})" for what, p in seen["log_problems"].items()
            )
            lines.append(f"PROBLEMS {name}: answers by status {codes}" + (f"; its log: {problems}" if problems else ""))
    total = sum(sum(seen["statuses"].values()) for seen in (answers or {}).values())
    if total and not any(seen["not_200"] for seen in answers.values()):
        lines.append(f"answers: all {total} answers to the load were 200")
    for mode in args.modes:
        entry = summary.get(mode, {})
        if "throughput_rps" in entry:
            tp = entry["throughput_rps"]
            cpu = entry.get("cpu_ms_per_req_at_saturation", {})
            parts = "  ".join(f"{t} {v:.0f}" + (f" ({cpu[t]:.3f} ms cpu)" if t in cpu else "") for t, v in tp.items())
            lines.append(f"saturation {mode}: {parts}")
        for name, ratios in entry.get("variants", {}).items():
            parts = [f"{ratios['throughput_rps']:.0f} rps, {ratios['cpu_ms_per_req']:.3f} ms cpu"]
            for other, label in (("pass", "of pass"), ("mux", "of mux")):
                if f"throughput_over_{other}" in ratios:
                    parts.append(
                        f"{ratios[f'throughput_over_{other}']:.0%} {label} "
                        f"(from cpu {ratios.get(f'capacity_over_{other}', float('nan')):.0%})"
                    )
            lines.append(f"  {name:<18} {mode:<6} " + ", ".join(parts))
    noisy = [r for r in results if r.get("machine", {}).get("other_cores_max", 0) > args.noise_limit]
    if noisy:
        lines.append(
            f"noise: {len(noisy)} of {len(results)} rows ran while other processes used more than "
            f"{args.noise_limit:g} cores (oth%); treat those rows with care, or run again on a quiet machine"
        )
    lines.append("")
    lines.append(
        "targets (VOID: answers other than 200, or warnings in the request log, during the load: see "
        "PROBLEMS; the figure proves nothing):"
        if any(c.get("void") for c in summary["checks"])
        else "targets:"
    )
    width = max([52, *(len(check["what"]) for check in summary["checks"])])
    for check in summary["checks"]:
        mark = "VOID" if check.get("void") else "ok  " if check["met"] else "MISS"
        goal = check["fmt"].format(check["goal"])
        floor = f", pass-through {check['fmt'].format(check['floor'])}" if check.get("floor") is not None else ""
        lines.append(
            f"  {mark} {check['what']:<{width}} {check['fmt'].format(check['value']):>10}   "
            f"(goal {check['op']} {goal}{floor})"
        )
    return "\n".join(lines)


def render_profile(profile: dict) -> str:
    lines = []
    for mode, data in profile.items():
        if not isinstance(data, dict) or "samples" not in data:
            lines.append(f"\nprofile {mode}: {data}")
            continue
        us = data["cpu_ms_per_req"] * 1000  # µs of CPU per request while profiled (py-spy adds a little)
        lines.append(
            f"\nprofile of {mode} at saturation: {data['rps']:.0f} rps, {us:.0f} µs CPU per request "
            f"({data['samples']} samples, {data['raw']})"
        )
        lines.append(
            "  self time by module, µs per request: "
            + ", ".join(f"{k} {v * us:.0f}" for k, v in data["packages_self"][:14])
        )
        lines.append("  hottest functions (self time, % and µs per request):")
        for name, frac in data["self"][:15]:
            lines.append(f"    {frac:6.1%} {frac * us:5.1f}  {name}")
    return "\n".join(lines)


def _f(value, width: int = 6, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else " " * (width - 1) + "-"


def _pct(value) -> str:
    return f"{value * 100:>5.0f}" if isinstance(value, (int, float)) else "    -"


if __name__ == "__main__":
    sys.exit(main())
