"""The request ledger: one row per request, written off the request path, queryable for lookups,
analytics and budgets' spend.

``LedgerRow`` (row.py) is the record; ``LedgerStore`` (store.py) the store contract, answered by
``SQLiteLedgerStore`` (sqlite.py) and ``PostgresLedgerStore`` (postgres.py), which share their queries
(sql.py); ``LedgerWriter`` (writer.py) queues rows and writes them in batches; ``LedgerSeed`` (seed.py)
starts a memory budget from the ledger's spend. ``store_from_url`` picks the store of a ``ledger.store`` URL.
The database drivers are imported only by the store that needs them.
"""

from __future__ import annotations

from mux.ledger.row import NANO_PER_USD, LedgerRow, nano_usd
from mux.ledger.store import LedgerStore
from mux.ledger.writer import LedgerWriter, WriterStats

__all__ = ["NANO_PER_USD", "LedgerRow", "LedgerStore", "LedgerWriter", "WriterStats", "nano_usd", "store_from_url"]


def store_from_url(url: str, *, schema: str = "public") -> LedgerStore:
    """Answer the (unopened) store of ``url``: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``postgresql://user@host:port/db`` (``postgres://`` too; ``schema`` is the PostgreSQL schema to use)."""
    if url.startswith("sqlite:///"):
        from mux.ledger.sqlite import SQLiteLedgerStore

        path = url[len("sqlite:///") :]
        if not path:
            raise ValueError("a sqlite ledger URL needs a file: sqlite:///mux.db")
        return SQLiteLedgerStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        from mux.ledger.postgres import PostgresLedgerStore

        return PostgresLedgerStore(url, schema=schema)
    raise ValueError("the ledger store must be sqlite:///FILE or postgresql://…")
