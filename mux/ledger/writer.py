"""The ledger writer: rows are queued on the request path and written in batches by one background task.

``submit(row)`` is synchronous and never waits: it appends to an in-memory queue and, when the queue was
empty or a batch has filled, wakes the flusher. The flusher waits up to ``flush_ms`` for a batch to fill,
then writes up to ``batch_rows`` rows in one ``store.write``.

**A full queue drops, and counts.** When ``max_queue`` rows are waiting (the store is down or slower than the
traffic), ``submit`` refuses the row, answers ``False`` and counts it in ``stats.dropped``. Backpressure
would make requests wait on the ledger's database, which is the one thing the ledger must not do to them;
the queue is sized (100 000 rows by default: seconds to minutes of traffic) so that an outage shorter than
that loses nothing, and ``stats`` tells when one was longer.

**A failed write is retried, never duplicated.** The batch is retried with exponential backoff
(``retry_base_s`` doubling to ``retry_max_s``) until the store takes it; the store ignores a ``request_id``
it already holds, so a write that succeeded but whose answer was lost cannot leave a duplicate. Failed
attempts count in ``stats.write_errors``; rows the store already had count in ``stats.duplicates``.

**``aclose()`` writes every queued row before it returns** (graceful shutdown: call it from the lifespan
shutdown, after the server has finished its requests; rows submitted while it runs are written too). With a
``timeout``, it gives up when the time is spent (a store that stays down must not hold a process forever):
the unwritten rows are counted in ``stats.lost`` and logged. Without one, it waits for the store.

``flush()`` writes the rows submitted so far without waiting for a batch to fill and returns when they are in
the store (a lookup right after a request finds its row); with ``timeout``, it gives up waiting, never the rows.

Rows never carry bodies unless the writer was built with ``store_bodies=True`` (``ledger.store_bodies``):
without it, ``submit`` strips ``request_body`` and ``response_body``. ``submit`` must be called on the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from mux.ledger.row import REQUEST_BODY, RESPONSE_BODY, LedgerRow, RowValues, row_values
from mux.ledger.store import LedgerStore

_DROP_LOG_EVERY_S = 10.0


class WriterStats(msgspec.Struct, frozen=True):
    """A snapshot of a writer's counters (rows, unless named otherwise)."""

    submitted: int  # accepted into the queue
    written: int  # inserted by the store
    duplicates: int  # taken by the store but already there (a replayed batch)
    dropped: int  # refused by submit: the queue was full, or the writer had closed
    lost: int  # given up on by aclose(timeout=…)
    write_errors: int  # failed store.write attempts (each one retried)
    batches: int  # successful store.write calls
    queue_depth: int  # waiting in the queue now
    in_flight: int  # in the batch being written now
    max_queue_depth: int  # the most ever waiting


class LedgerWriter:
    """Queues ledger rows and writes them to ``store`` in batches, off the request path."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        batch_rows: int = 500,
        flush_ms: float = 5,
        max_queue: int = 100_000,
        store_bodies: bool = False,
        retry_base_s: float = 0.05,
        retry_max_s: float = 2.0,
        logger: Any = None,
    ) -> None:
        if batch_rows < 1 or max_queue < 1:
            raise ValueError("batch_rows and max_queue must be at least 1")
        self.store = store
        self.store_bodies = store_bodies
        self._batch_rows = batch_rows
        self._flush_s = flush_ms / 1000
        self._max_queue = max_queue
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._logger = logger or structlog.get_logger("mux.ledger")
        self._queue: deque[RowValues] = deque()
        self._in_flight: Sequence[RowValues] = ()
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Future[None] | None = None  # what the flusher awaits while it has nothing to do
        self._timer: asyncio.TimerHandle | None = None  # ends the wait of a batch that has not filled
        self._due = False  # the timer has run: write what is queued
        self._closing = False
        self._finished = False
        self._submitted = self._written = self._duplicates = self._dropped = self._lost = 0
        self._write_errors = self._batches = self._max_depth = 0
        self._settled = 0  # rows taken by the store (written or already there), in submission order
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # flush() calls: (rows to settle, future)
        self._last_drop_log = -_DROP_LOG_EVERY_S

    # the request path

    def submit(self, row: RowValues | LedgerRow) -> bool:
        """Queue ``row`` (its values, as ``TraceLayer`` builds them, or a ``LedgerRow``) for writing; answer
        ``False`` (and count it dropped) when the queue is full or the writer has closed. Never waits."""
        queue = self._queue
        if len(queue) >= self._max_queue or self._finished:
            self._drop()
            return False
        if type(row) is not tuple:
            row = row_values(row)  # type: ignore[arg-type]
        if not self.store_bodies and (row[REQUEST_BODY] is not None or row[RESPONSE_BODY] is not None):
            row = row[:REQUEST_BODY] + (None, None)
        queue.append(row)
        self._submitted += 1
        depth = len(queue)
        if depth > self._max_depth:
            self._max_depth = depth
        if depth == 1:
            self._arm()
        elif depth >= self._batch_rows:
            self._wake()
        return True

    def _drop(self) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            self._logger.warning(
                "ledger_rows_dropped", dropped=self._dropped, max_queue=self._max_queue, closed=self._finished
            )

    @property
    def stats(self) -> WriterStats:
        return WriterStats(
            submitted=self._submitted,
            written=self._written,
            duplicates=self._duplicates,
            dropped=self._dropped,
            lost=self._lost,
            write_errors=self._write_errors,
            batches=self._batches,
            queue_depth=len(self._queue),
            in_flight=len(self._in_flight),
            max_queue_depth=self._max_depth,
        )

    async def flush(self, timeout: float | None = None) -> bool:
        """Write every row submitted before the call now (not waiting for a batch to fill); answer ``True``
        once they are all in the store, ``False`` when ``timeout`` (seconds) passed first or the writer is not
        running. The rows stay queued either way."""
        target = self._submitted
        if self._settled >= target:
            return True
        if self._task is None or self._task.done():
            return False
        waiter = asyncio.get_running_loop().create_future()
        entry = (target, waiter)
        self._waiters.append(entry)
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return self._settled >= target

    def _settle(self, rows: int) -> None:
        self._settled += rows
        if self._waiters:
            for target, waiter in [w for w in self._waiters if w[0] <= self._settled]:
                self._waiters.remove((target, waiter))
                if not waiter.done():
                    waiter.set_result(None)

    # lifecycle

    def start(self) -> None:
        """Start the flusher on the running event loop (the store must be open)."""
        if self._task is not None:
            raise RuntimeError("the ledger writer has already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mux-ledger-writer")

    async def aclose(self, timeout: float | None = None) -> None:
        """Write every queued row, then stop. With ``timeout`` (seconds), stop when it is spent and count
        the rows not written as lost. The store stays open: its owner closes it."""
        self._closing = True
        if self._task is None:
            self.start()
        task = self._task
        assert task is not None
        self._wake()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            lost = len(self._queue) + len(self._in_flight)
            self._lost += lost
            self._queue.clear()
            self._in_flight = ()
            self._logger.error("ledger_rows_lost", lost=lost, timeout_s=timeout)
        self._finished = True
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # the flusher

    def _wake(self) -> None:
        """Have the flusher look at the queue now (a full batch, a flush, the close, the timer)."""
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _arm(self) -> None:
        """Start the wait of a batch's first row, if the flusher is waiting (else it arms it itself)."""
        if self._timer is None and self._wakeup is not None:
            self._timer = self._wakeup.get_loop().call_later(self._flush_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._due = True
        self._wake()

    async def _run(self) -> None:
        queue, loop = self._queue, asyncio.get_running_loop()
        try:
            while True:
                if queue and (self._due or self._closing or self._waiters or len(queue) >= self._batch_rows):
                    if self._timer is not None:
                        self._timer.cancel()
                        self._timer = None
                    self._due = False
                    batch = [queue.popleft() for _ in range(min(len(queue), self._batch_rows))]
                    self._in_flight = batch
                    await self._write(batch)
                    self._in_flight = ()
                    if queue:  # a store that writes without waiting must not hold the loop for a whole backlog
                        await asyncio.sleep(0)
                    continue
                if self._closing:
                    self._finished = True
                    return
                self._wakeup = loop.create_future()
                if queue:  # rows that came while a batch was written wait for the next one
                    self._arm()
                try:
                    await self._wakeup
                finally:
                    self._wakeup = None
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def _write(self, batch: list[RowValues]) -> None:
        """Write ``batch``, retrying with backoff until the store takes it."""
        delay = self._retry_base_s
        while True:
            try:
                written = await self.store.write(batch)
            except Exception as exc:  # the store's failure, whatever it is: retry (the write is idempotent)
                self._write_errors += 1
                self._logger.warning(
                    "ledger_write_failed",
                    rows=len(batch),
                    error=type(exc).__name__,
                    message=str(exc)[:200],
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._written += written
            self._duplicates += len(batch) - written
            self._batches += 1
            self._settle(len(batch))
            return
