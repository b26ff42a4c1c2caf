"""ClientWatch alone: a client's ``http.disconnect`` cancels the watched work, and nothing else is absorbed."""

from __future__ import annotations

import asyncio
import time

import pytest

from mux.asgi import WATCH_AFTER_S, ClientWatch


def disconnect_after(seconds: float):
    async def receive() -> dict:
        await asyncio.sleep(seconds)
        return {"type": "http.disconnect"}

    return receive


def test_a_client_that_goes_away_cancels_the_watched_work_and_the_cancellation_is_absorbed():
    async def main() -> tuple[ClientWatch, float, bool]:
        started = time.monotonic()
        finished = False
        with ClientWatch(disconnect_after(0.01)) as watch:
            await asyncio.sleep(5)
            finished = True
        return watch, time.monotonic() - started, finished

    watch, elapsed, finished = asyncio.run(main())
    assert watch.gone and not finished
    assert elapsed < WATCH_AFTER_S + 0.5


def test_work_done_before_the_watch_starts_creates_no_watch():
    async def main() -> ClientWatch:
        with ClientWatch(disconnect_after(0)) as watch:
            await asyncio.sleep(0)
        await asyncio.sleep(WATCH_AFTER_S * 1.5)  # the shared timer fires and skips it
        return watch

    watch = asyncio.run(main())
    assert not watch.gone and watch._watch is None


def test_a_cancellation_that_is_not_the_clients_goes_on():
    async def main() -> None:
        async def work() -> None:
            with ClientWatch(disconnect_after(3600)):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(work())
        await asyncio.sleep(WATCH_AFTER_S * 1.5)  # the watch is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_cancellation_alongside_the_clients_going_away_goes_on():
    async def main() -> None:
        tasks: list[asyncio.Task] = []

        async def receive() -> dict:
            tasks[0].cancel()  # e.g. the server shutting down as the client goes away
            return {"type": "http.disconnect"}

        async def work() -> None:
            with ClientWatch(receive):
                await asyncio.sleep(5)

        tasks.append(asyncio.ensure_future(work()))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]

    asyncio.run(main())
