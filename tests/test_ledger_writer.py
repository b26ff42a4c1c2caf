"""The ledger writer: batches off the request path, a bounded queue, retries without duplicates, and a close
that writes everything queued. Run against both stores (the ``backend`` fixture)."""

from __future__ import annotations

import asyncio

from mux.ledger import LedgerRow, LedgerWriter
from tests.ledger_backends import backend, count, mixed_rows, postgres_available  # noqa: F401

NOW = 1_750_000_000.0


class Gated:
    """A store whose writes wait until ``gate`` is set (a slow or stalled database)."""

    def __init__(self, store) -> None:
        self.store, self.gate, self.calls = store, asyncio.Event(), 0

    async def write(self, rows):
        self.calls += 1
        await self.gate.wait()
        return await self.store.write(rows)


class Flaky:
    """A store that fails its first two writes: the first after committing (the answer was lost), the second
    before (the database was unreachable); then it works."""

    def __init__(self, store) -> None:
        self.store, self.calls = store, 0

    async def write(self, rows):
        self.calls += 1
        if self.calls == 1:
            await self.store.write(rows)
            raise ConnectionResetError("connection lost before the commit was acknowledged")
        if self.calls == 2:
            raise ConnectionRefusedError("database unreachable")
        return await self.store.write(rows)


def test_every_submitted_row_of_every_outcome_is_written_exactly_once(backend):
    rows = mixed_rows(1234, start=NOW, span_s=60)

    async def scenario(store):
        writer = LedgerWriter(store, batch_rows=500, flush_ms=2)
        writer.start()
        for i, row in enumerate(rows):
            assert writer.submit(row)
            if i % 100 == 0:
                await asyncio.sleep(0)  # requests arrive over several loop turns
        await writer.aclose()
        listed = await store.requests(limit=500)
        return writer.stats, await count(store), await store.spend(0), listed

    stats, total, spent, (first_page, _) = backend.run(scenario)
    assert total == 1234 and stats.written == 1234 and stats.submitted == 1234
    assert stats.duplicates == stats.dropped == stats.lost == stats.write_errors == 0
    assert stats.queue_depth == stats.in_flight == 0 and stats.batches >= 3
    assert spent == sum(r.cost_nano for r in rows)
    assert {r.status for r in first_page} == {200, 401, 402, 429, 499, 502}


def test_a_full_queue_drops_and_counts_and_aclose_writes_every_queued_row(backend):
    async def scenario(store):
        gated = Gated(store)
        writer = LedgerWriter(gated, batch_rows=100, flush_ms=1, max_queue=1000)
        writer.start()
        rows = iter(mixed_rows(3000, start=NOW, span_s=60))
        accepted, refused = [], 0
        for _ in range(2):  # fill the queue, let the flusher take a batch (and stall on the store), fill again
            while writer.submit(row := next(rows)):
                accepted.append(row)
            refused += 1
            assert writer.stats.queue_depth == 1000  # "full" is exactly the limit
            await asyncio.sleep(0.01)
        full = writer.stats
        closing = asyncio.create_task(writer.aclose())
        gated.gate.set()
        while writer.stats.queue_depth == 1000:
            await asyncio.sleep(0)
        late = next(rows)
        assert writer.submit(late)  # a request finishing during the shutdown is still recorded
        accepted.append(late)
        await closing
        assert not writer.submit(next(rows))  # after close: refused and counted
        return accepted, refused, full, writer.stats, await count(store), gated.calls

    accepted, refused, full, stats, total, calls = backend.run(scenario)
    assert full.in_flight == 100 and full.dropped == refused == 2 and full.max_queue_depth == 1000
    assert total == len(accepted) == 1101 == stats.written
    assert stats.dropped == 3 and stats.lost == 0 and stats.queue_depth == 0 and calls == stats.batches


def test_a_replayed_batch_writes_no_duplicate(backend):
    rows = mixed_rows(300, start=NOW, span_s=60)

    async def scenario(store):
        writer = LedgerWriter(store, batch_rows=128)
        writer.start()
        for row in rows + rows[:150] + rows:  # the same rows submitted again, in and across batches
            writer.submit(row)
        await writer.aclose()
        return writer.stats, await count(store)

    stats, total = backend.run(scenario)
    assert total == 300 and stats.written == 300 and stats.duplicates == 450


def test_a_store_that_fails_twice_then_succeeds_leaves_each_row_once(backend):
    rows = mixed_rows(40, start=NOW, span_s=60)

    async def scenario(store):
        flaky = Flaky(store)
        writer = LedgerWriter(flaky, retry_base_s=0.001)
        writer.start()
        for row in rows:
            writer.submit(row)
        await writer.aclose()
        return writer.stats, flaky.calls, await count(store)

    stats, calls, total = backend.run(scenario)
    assert total == 40 and calls == 3 and stats.write_errors == 2
    assert stats.written == 0 and stats.duplicates == 40  # the first attempt had committed them


def test_aclose_with_a_timeout_gives_up_on_a_dead_store_and_counts_the_rows_lost(backend):
    class Dead:
        async def write(self, rows):
            raise ConnectionRefusedError("database unreachable")

    async def scenario(_store):
        writer = LedgerWriter(Dead(), batch_rows=10, retry_base_s=0.001, retry_max_s=0.005)
        writer.start()
        for row in mixed_rows(25, start=NOW, span_s=60):
            writer.submit(row)
        await writer.aclose(timeout=0.1)
        return writer.stats

    stats = backend.run(scenario)
    assert stats.lost == 25 and stats.written == 0 and stats.write_errors > 1
    assert stats.queue_depth == stats.in_flight == 0


def test_bodies_are_written_only_when_the_writer_stores_bodies(backend):
    def row(request_id):
        return LedgerRow(
            request_id=request_id,
            created_at=NOW,
            key_name="key-a",
            request_body=b'{"messages":[]}',
            response_body=b'{"choices":[]}',
        )

    async def scenario(store):
        plain, keeping = LedgerWriter(store), LedgerWriter(store, store_bodies=True)
        plain.start(), keeping.start()
        plain.submit(row("req-plain"))
        keeping.submit(row("req-bodies"))
        await plain.aclose()
        await keeping.aclose()
        return await store.get("req-plain"), await store.get("req-bodies")

    plain, kept = backend.run(scenario)
    assert plain.request_body is None and plain.response_body is None
    assert kept.request_body == b'{"messages":[]}' and kept.response_body == b'{"choices":[]}'


def test_rows_submitted_before_start_are_written_by_aclose(backend):
    async def scenario(store):
        writer = LedgerWriter(store)
        for row in mixed_rows(7, start=NOW, span_s=60):
            writer.submit(row)
        await writer.aclose()
        return await count(store)

    assert backend.run(scenario) == 7


def test_flush_writes_a_partial_batch_at_once_and_answers_when_it_is_stored(backend):
    rows = mixed_rows(3, start=NOW, span_s=1, prefix="flush")

    async def scenario(store):
        writer = LedgerWriter(store, batch_rows=1000, flush_ms=60_000)  # a batch would wait a minute to fill
        idle = await writer.flush(timeout=0.01)
        writer.start()
        for row in rows:
            writer.submit(row)
        began = asyncio.get_running_loop().time()
        flushed = await writer.flush(timeout=5)
        took = asyncio.get_running_loop().time() - began
        stored = await count(store)
        again = await writer.flush(timeout=0)
        await writer.aclose()
        return idle, flushed, took, stored, again

    idle, flushed, took, stored, again = backend.run(scenario)
    assert idle is True  # nothing was submitted: nothing to wait for
    assert flushed is True and stored == 3 and took < 1 and again is True


def test_flush_gives_up_waiting_at_its_timeout_and_the_rows_are_still_written(backend):
    rows = mixed_rows(2, start=NOW, span_s=1, prefix="slow")

    async def scenario(store):
        gated = Gated(store)
        writer = LedgerWriter(gated, flush_ms=1)
        writer.start()
        for row in rows:
            writer.submit(row)
        timed_out = await writer.flush(timeout=0.05)
        gated.gate.set()
        flushed = await writer.flush(timeout=5)
        await writer.aclose()
        return timed_out, flushed, await count(store)

    assert backend.run(scenario) == (False, True, 2)
