"""Resources with a lifecycle: opened in order at lifespan startup, closed in reverse at shutdown; one that fails
to open stops startup with a message naming it."""

from __future__ import annotations

import asyncio

import pytest

import mux
from mux.resources import Resources
from tests.servers import serve

CONFIG = mux.parse_config({"providers": [{"name": "openai", "type": "openai", "api_key": "k"}]})


class Recorder:
    def __init__(self, name: str, log: list[str], fail_open: bool = False, fail_close: bool = False) -> None:
        self.name, self.log, self.fail_open, self.fail_close = name, log, fail_open, fail_close

    async def open(self) -> None:
        if self.fail_open:
            raise ConnectionRefusedError(f"cannot reach {self.name} at 127.0.0.1:1")
        self.log.append(f"open {self.name}")

    async def aclose(self) -> None:
        self.log.append(f"close {self.name}")
        if self.fail_close:
            raise RuntimeError("close failed")


async def lifespan(app: mux.Gateway) -> list[dict]:
    """Drive one lifespan (startup, then shutdown if it started); answer what the app sent."""
    inbox: asyncio.Queue = asyncio.Queue()
    sent: list[dict] = []
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete":
            await inbox.put({"type": "lifespan.shutdown"})
        elif message["type"] == "lifespan.startup.failed":
            raise RuntimeError("stop")

    try:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    except RuntimeError:
        pass
    return sent


def test_resources_open_in_order_and_close_in_reverse_at_the_lifespan():
    log: list[str] = []
    resources = Resources(CONFIG)
    resources.add("spend store", Recorder("spend", log))
    resources.add("ledger", Recorder("ledger", log))
    sent = asyncio.run(lifespan(mux.build_app(CONFIG, resources=resources)))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert log == ["open spend", "open ledger", "close ledger", "close spend"]


def test_a_store_that_fails_to_open_stops_startup_naming_it_and_closes_what_was_opened():
    log: list[str] = []
    resources = Resources(CONFIG)
    resources.add("spend store", Recorder("spend", log))
    resources.add("ledger store", Recorder("postgres", log, fail_open=True))
    sent = asyncio.run(lifespan(mux.build_app(CONFIG, resources=resources)))
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "ledger store" in sent[0]["message"] and "cannot reach postgres" in sent[0]["message"]
    assert log == ["open spend", "close spend"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_server_does_not_start_when_a_resource_cannot_open():
    resources = Resources(CONFIG)
    resources.add("ledger store", Recorder("postgres", [], fail_open=True))
    with pytest.raises(RuntimeError, match="did not start"):
        with serve(mux.build_app(CONFIG, resources=resources)):
            pass


def test_a_failing_close_is_reported_and_the_others_still_close():
    log: list[str] = []
    resources = Resources(CONFIG)
    resources.add("a", Recorder("a", log))
    resources.add("b", Recorder("b", log, fail_close=True))

    async def cycle() -> list[str]:
        await resources.open()
        return await resources.aclose()

    failures = asyncio.run(cycle())
    assert failures == ["b: RuntimeError: close failed"] and log == ["open a", "open b", "close b", "close a"]


def test_without_a_lifespan_the_first_request_opens_the_resources():
    log: list[str] = []
    resources = Resources(CONFIG)
    resources.add("store", Recorder("store", log))
    with serve(mux.build_app(CONFIG, resources=resources), lifespan="off") as url:
        import httpx

        assert httpx.get(url + "/healthz").status_code == 200
    assert log == ["open store"]
