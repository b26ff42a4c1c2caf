"""A movable deadline for a task: cancels the task that entered it when the deadline passes.

Unlike ``asyncio.timeout``, moving the deadline later costs one float store: the timer wakes at the old
time, sees the new one and re-arms itself. That is what a stream wants, whose idle deadline moves with every
chunk. Moving it earlier re-arms the timer at once. On exit after it fired, ``TimeoutError`` is raised (as
``asyncio.timeout`` does), unless the task was also cancelled for another reason. A plain ``with`` block
inside the task's coroutine (entering and leaving await nothing, so no coroutine is made for either).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    __slots__ = ("when", "expired", "_loop", "_task", "_handle")

    def __init__(self, when: float) -> None:
        self.when = when  # loop time
        self.expired = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._handle: asyncio.TimerHandle | None = None

    def __enter__(self) -> Deadline:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._handle = self._loop.call_at(self.when, self._fire)
        return self

    def move(self, when: float) -> None:
        """Set the deadline to ``when`` (loop time), earlier or later."""
        if when < self.when and self._handle is not None:
            self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)  # type: ignore[union-attr]
        self.when = when

    def _fire(self) -> None:
        if self._loop.time() < self.when:  # type: ignore[union-attr]
            self._handle = self._loop.call_at(self.when, self._fire)  # type: ignore[union-attr]
            return
        self.expired = True
        self._task.cancel()  # type: ignore[union-attr]

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and kind is asyncio.CancelledError and self._task.uncancel() == 0:  # type: ignore[union-attr]
            raise TimeoutError from error
