"""Store writes that may land a few ms late, off the request path: queued, then run in batches.

A budget's settle or release and a rate limit's token correction come after the answer; nothing waits for
them. ``Deferred`` queues them; the store runs the queue in one batch (one SQLite transaction, one Redis
round trip) either ahead of its next call that needs a round trip anyway (``take``, inside that same
transaction or pipeline) or from one background task ``FLUSH_S`` after the first queued write. Every queued
write is idempotent by request id or only ever makes a limit stricter, so a batch run twice after a failure
counts nothing twice that matters. A batch that meets an unreachable store is tried again after
``RETRIES_S``; past them it is dropped and logged (a budget's reservation then expires unsettled, as after a
crash). ``flush`` runs what is queued now (the stores call it in ``close`` and before reads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import structlog

from mux.stores import StoreUnavailable

Op = TypeVar("Op")
FLUSH_S = 0.002
RETRIES_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class Deferred(Generic[Op]):
    """A queue of writes for one store; ``apply(ops)`` runs a batch (raising StoreUnavailable when the store
    cannot be reached)."""

    def __init__(
        self,
        apply: Callable[[list[Op]], Awaitable[Any]],
        *,
        name: str,
        delay_s: float = FLUSH_S,
        retries_s: tuple[float, ...] = RETRIES_S,
        logger: Any = None,
    ) -> None:
        self._apply = apply
        self._name = name
        self._delay = delay_s
        self._retries = retries_s
        self._ops: list[Op] = []
        self._task: asyncio.Task | None = None
        self._logger = logger or structlog.get_logger("mux.stores")

    def __len__(self) -> int:
        return len(self._ops)

    def add(self, op: Op) -> None:
        """Queue ``op``; the background task runs it within ``delay_s`` unless a store call takes it first."""
        self._ops.append(op)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def take(self) -> list[Op]:
        """Answer the queued writes and empty the queue (the caller runs them, or ``give_back`` on failure)."""
        ops, self._ops = self._ops, []
        return ops

    def give_back(self, ops: list[Op]) -> None:
        """Queue ``ops`` again, ahead of any queued since (their batch failed)."""
        if ops:
            self._ops[:0] = ops
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Run every write queued now; raise StoreUnavailable (the writes stay queued) when the store is down."""
        ops = self.take()
        if ops:
            try:
                await self._apply(ops)
            except BaseException:
                self.give_back(ops)
                raise

    async def close(self) -> None:
        """Run what is queued, once (logging what an unreachable store loses), and stop the background task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        ops = self.take()
        if ops:
            try:
                await self._apply(ops)
            except Exception as exc:  # noqa: BLE001 - shutting down: report what is lost
                self._logger.error("store_writes_dropped", store=self._name, writes=len(ops), error=str(exc))

    async def _run(self) -> None:
        try:
            await asyncio.sleep(self._delay)
            failures = 0
            while self._ops:
                ops = self.take()
                try:
                    await self._apply(ops)
                    failures = 0
                except StoreUnavailable as exc:
                    if failures == len(self._retries):
                        self._logger.error("store_writes_dropped", store=self._name, writes=len(ops), error=str(exc))
                        failures = 0
                        continue
                    self._ops[:0] = ops
                    await asyncio.sleep(self._retries[failures])
                    failures += 1
                except Exception as exc:  # noqa: BLE001 - nobody awaits these writes: report, never raise
                    self._logger.error(
                        "store_writes_failed", store=self._name, writes=len(ops), error=f"{type(exc).__name__}: {exc}"
                    )
        finally:
            if self._task is asyncio.current_task():
                self._task = None
