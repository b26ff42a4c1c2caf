"""The generation lookup's handler alone (``mux.generation.Generation``) on a real SQLite ledger: a record
whose batch is written while the lookup runs is still found."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from mux.generation import Generation
from mux.ledger import LedgerRow, LedgerWriter
from mux.ledger.sqlite import SQLiteLedgerStore


class WrittenDuringLookup:
    """The SQLite store, except that its first ``get`` lets the writer write its queued batch after the query
    read the table and before it answers: a batch committed while a lookup runs."""

    def __init__(self, store: SQLiteLedgerStore) -> None:
        self.store = store
        self.writer: LedgerWriter | None = None
        self.gets = 0

    async def write(self, rows: Any) -> int:
        return await self.store.write(rows)

    async def get(self, id: str, key_name: str | None = None) -> LedgerRow | None:
        row = await self.store.get(id, key_name)
        self.gets += 1
        if self.gets == 1:
            assert self.writer is not None and await self.writer.flush(5)
        return row


async def lookup(handler: Generation, id: str) -> tuple[int, dict]:
    query = f"id={id}".encode()
    scope = {"type": "http", "method": "GET", "path": "/v1/generation", "headers": [], "query_string": query}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await handler(scope, receive, send)
    return sent[0]["status"], msgspec.json.decode(sent[1]["body"])


def test_a_record_written_while_its_lookup_runs_is_found(tmp_path):
    async def scenario() -> tuple[tuple[int, dict], tuple[int, dict], int]:
        store = SQLiteLedgerStore(str(tmp_path / "ledger.db"))
        await store.open()
        racy = WrittenDuringLookup(store)
        writer = racy.writer = LedgerWriter(racy, flush_ms=60_000)  # type: ignore[arg-type]
        writer.start()
        try:
            writer.submit(LedgerRow(request_id="req_1", created_at=1.0, response_id="chatcmpl-1", status=200))
            handler = Generation(ledger=writer, admin_token=None)
            found = await lookup(handler, "chatcmpl-1")
            missing = await lookup(handler, "chatcmpl-none")  # nothing queued: answered after one look
            return found, missing, racy.gets
        finally:
            await writer.aclose()
            await store.close()

    (status, body), (missing_status, _), gets = asyncio.run(scenario())
    assert status == 200 and body["data"]["id"] == "chatcmpl-1"
    assert missing_status == 404 and gets == 3
