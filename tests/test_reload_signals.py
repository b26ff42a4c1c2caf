"""Reload by signal: SIGHUP is handled on the event loop, never inside a signal handler, so a signal that lands
while the process holds a lock the reload needs cannot hang it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from .test_app_entry import ROOT, env

BASE = "providers:\n  - {name: openai, type: openai, api_key: k, models: [gpt-4o-mini]}\n"

# Starts the gateway of ``app.py`` through its lifespan, then sends itself SIGHUP while its main thread holds
# the route-version store's lock (as it does for a moment whenever it assigns versions). A reload run inside
# the signal handler would wait on that lock forever; on the event loop it runs once the lock is released.
SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, sys, time
    import app

    gateway = app.create_app()

    async def main():
        inbox = asyncio.Queue()
        started = asyncio.Event()

        async def send(message):
            if message["type"] == "lifespan.startup.complete":
                started.set()

        lifespan = asyncio.ensure_future(gateway({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        await started.wait()
        with open(os.environ["MUX_CONFIG"], "a") as config:
            config.write("routes:\\n  second: {targets: [{model: openai/gpt-4o-mini}]}\\n")
        with gateway.routing.versions._lock:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)  # the signal lands while this thread holds the lock
        for _ in range(250):
            if "second" in gateway.routing.routes:
                break
            await asyncio.sleep(0.02)
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
        sys.stderr.write("served routes: %s\\n" % sorted(gateway.routing.routes))

    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
""")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
@pytest.mark.parametrize("loop, state", [("asyncio", None), ("uvloop", "state.sqlite")])
def test_sighup_while_the_version_store_lock_is_held_reloads_instead_of_hanging(tmp_path, loop, state):
    config = tmp_path / "mux.yaml"
    config.write_text(BASE + (f"server: {{state_path: {tmp_path / state}}}\n" if state else ""))
    try:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, loop],
            cwd=ROOT,
            capture_output=True,
            timeout=15,
            env=env(MUX_CONFIG=str(config), PYTHONPATH=str(ROOT)),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway hung: SIGHUP reloaded inside the signal handler, on a lock its thread held")
    assert result.returncode == 0, result.stderr.decode()
    assert b"served routes: ['second']" in result.stderr
    assert b'"event":"config_reloaded"' in result.stdout
