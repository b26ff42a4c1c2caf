"""A movable deadline for a task: cancels the task that entered it when the deadline passes.

Unlike ``asyncio.timeout``, moving the deadline later costs one float store: the timer wakes at the old
time, sees the new one and re-arms itself. That is what a stream wants, whose idle deadline moves with every
chunk. Moving it earlier re-arms the timer at once. On exit after it fired, ``TimeoutError`` is raised (as
``asyncio.timeout`` does), unless the task was also cancelled for another reason. A plain ``with`` block
inside the task's coroutine (entering and leaving await nothing, so no coroutine is made for either).

**Deferred timers.** A deadline more than ``2 * ARM_AFTER_S`` away arms no timer of its own when entered:
it joins a batch that one timer per loop arms ``ARM_AFTER_S`` later, each deadline of it still entered then
getting its own timer at its exact time (still at least ``ARM_AFTER_S`` ahead). Work that ends sooner —
every attempt of a busy gateway, at its usual latency — costs no timer of its own, and no deadline fires
late. Nearer deadlines, and deadlines moved that near, are armed at once.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from mux.later import Later

ARM_AFTER_S = 0.5


class Deadline:
    __slots__ = ("when", "expired", "_loop", "_task", "_handle", "_done")

    def __init__(self, when: float) -> None:
        self.when = when  # loop time
        self.expired = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._done = False

    def __enter__(self) -> Deadline:
        self._loop = loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self.when - loop.time() > 2 * ARM_AFTER_S:
            _later.add(self, loop, ARM_AFTER_S)
        else:
            self._handle = loop.call_at(self.when, self._fire)
        return self

    def move(self, when: float) -> None:
        """Set the deadline to ``when`` (loop time), earlier or later."""
        loop = self._loop
        if when < self.when and loop is not None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = loop.call_at(when, self._fire)
            elif when - loop.time() <= 2 * ARM_AFTER_S:  # in a batch, but now too near to wait for it
                self._handle = loop.call_at(when, self._fire)
        self.when = when

    def _arm(self) -> None:
        """Arm the timer of a deadline its batch holds (unless it left, or is armed already)."""
        if not self._done and self._handle is None:
            self._handle = self._loop.call_at(self.when, self._fire)  # type: ignore[union-attr]

    def _fire(self) -> None:
        if self._loop.time() < self.when:  # type: ignore[union-attr]
            self._handle = self._loop.call_at(self.when, self._fire)  # type: ignore[union-attr]
            return
        self.expired = True
        self._task.cancel()  # type: ignore[union-attr]

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._done = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and kind is asyncio.CancelledError and self._task.uncancel() == 0:  # type: ignore[union-attr]
            raise TimeoutError from error


_later: Later[Deadline] = Later(Deadline._arm)  # the deadlines the next batch timer arms
