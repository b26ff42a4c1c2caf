"""The movable deadline: fires at the latest time it was moved to, earlier moves take effect at once."""

from __future__ import annotations

import asyncio

import pytest

from mux import deadline as deadline_module
from mux.deadline import Deadline


def test_moving_the_deadline_later_keeps_the_task_alive_until_the_new_time():
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            with Deadline(start + 0.05) as deadline:
                for _ in range(4):
                    await asyncio.sleep(0.03)
                    deadline.move(loop.time() + 0.05)
                await asyncio.sleep(1)
        return loop.time() - start

    elapsed = asyncio.run(scenario())
    assert 0.15 < elapsed < 0.5


def test_moving_the_deadline_earlier_fires_sooner():
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            with Deadline(start + 5) as deadline:
                deadline.move(start + 0.05)
                await asyncio.sleep(1)
        return loop.time() - start

    assert asyncio.run(scenario()) < 0.5


def test_a_deadline_that_did_not_fire_lets_the_block_finish_and_other_cancellations_through():
    async def finishes() -> str:
        with Deadline(asyncio.get_running_loop().time() + 1):
            await asyncio.sleep(0.01)
        return "done"

    assert asyncio.run(finishes()) == "done"

    async def cancelled_from_outside() -> None:
        async def inner() -> None:
            with Deadline(asyncio.get_running_loop().time() + 5):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(inner())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_from_outside())


def test_a_far_deadline_arms_its_timer_later_and_still_fires_on_time(monkeypatch):
    """A deadline more than twice ARM_AFTER_S away joins a batch armed after ARM_AFTER_S: it fires at its own
    time, one that leaves before the batch never arms a timer, and one moved near is armed at once."""
    monkeypatch.setattr(deadline_module, "ARM_AFTER_S", 0.05)

    async def far() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            with Deadline(start + 0.3) as timer:
                assert timer._handle is None  # waiting for its batch
                await asyncio.sleep(0.08)
                assert timer._handle is not None  # armed by the batch, at its own time
                await asyncio.sleep(1)
        return loop.time() - start

    elapsed = asyncio.run(far())
    assert 0.29 < elapsed < 0.8

    async def left_early() -> None:
        loop = asyncio.get_running_loop()
        with Deadline(loop.time() + 0.3) as timer:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.08)  # the batch ran: nothing armed for a deadline that was left
        assert timer._handle is None and not timer.expired

    asyncio.run(left_early())

    async def moved_near() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            with Deadline(start + 5) as timer:
                timer.move(start + 0.02)  # before its batch: armed at once
                assert timer._handle is not None
                await asyncio.sleep(1)
        return loop.time() - start

    assert asyncio.run(moved_near()) < 0.5
