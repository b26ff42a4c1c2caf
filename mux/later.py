"""Work deferred together: one timer per event loop runs every item queued before it fires.

Used where most work ends before it would need a timer of its own (an attempt's deadline, a client-disconnect
watch): ``Later(run).add(item, loop, delay_s)`` queues ``item``; the first item queued on a loop arms one
``call_later(delay_s)``, and when it fires ``run(item)`` is called for every item queued since (``run`` may
queue an item again, for the next timer). Reads and writes only its own batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Later(Generic[T]):
    """Items run by ``run`` in batches, one pending timer per loop (a batch only holds items of its loop)."""

    __slots__ = ("_run", "_batch")

    def __init__(self, run: Callable[[T], None]) -> None:
        self._run = run
        self._batch: tuple[asyncio.AbstractEventLoop, list[T]] | None = None

    def add(self, item: T, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        """Have ``run(item)`` called by the pending timer of ``loop``, or by a new one ``delay_s`` from now."""
        batch = self._batch
        if batch is None or batch[0] is not loop:
            batch = self._batch = (loop, [])
            loop.call_later(delay_s, self._fire, batch)
        batch[1].append(item)

    def _fire(self, batch: tuple[asyncio.AbstractEventLoop, list[T]]) -> None:
        if self._batch is batch:
            self._batch = None
        for item in batch[1]:
            self._run(item)
