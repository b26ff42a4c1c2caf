"""The standalone gateway tunes the collector once started (mux.runtime); a wrapped app and gc_tune: false
do not. Each case runs in a fresh interpreter: the tuning is process-wide and the test process disables it
(conftest)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mux.runtime import YOUNG_THRESHOLD

SCRIPT = """
import asyncio, gc, json, sys
import mux
from mux.asgi import answer_lifespan

async def own_app(scope, receive, send):
    await answer_lifespan(receive, send)

config = mux.parse_config({"providers": [{"name": "openai", "type": "openai", "api_key": "sk-test-0123456789"}],
                           "server": {"gc_tune": %(tune)s}})
app = mux.build_app(config) if %(standalone)s else mux.wrap(own_app, config)
before = (gc.get_freeze_count(), gc.get_threshold())

async def main():
    messages = [{"type": "lifespan.startup"}]
    sent = []
    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
    async def send(message):
        sent.append(message["type"])
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    while not sent:
        await asyncio.sleep(0.01)
    task.cancel()
    return sent

sent = asyncio.run(main())
print(json.dumps({"sent": sent, "frozen_before": before[0], "frozen": gc.get_freeze_count(),
                  "threshold": gc.get_threshold(), "default": before[1]}))
"""


def run(*, standalone: bool, tune: bool) -> dict:
    code = SCRIPT % {"standalone": standalone, "tune": tune}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_standalone_gateway_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    result = run(standalone=True, tune=True)
    assert result["sent"] == ["lifespan.startup.complete"]
    assert result["frozen_before"] == 0 and result["frozen"] > 1000
    assert result["threshold"] == [YOUNG_THRESHOLD, 50, 100] and YOUNG_THRESHOLD > 700


@pytest.mark.parametrize(("standalone", "tune"), [(True, False), (False, True)])
def test_gc_tune_off_or_a_wrapped_app_keeps_the_process_settings(standalone: bool, tune: bool) -> None:
    result = run(standalone=standalone, tune=tune)
    assert result["sent"] == ["lifespan.startup.complete"]
    assert result["frozen"] == 0 and result["threshold"] == result["default"]
