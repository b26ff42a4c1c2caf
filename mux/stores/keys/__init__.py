"""Where virtual keys live: the ``KeyStore`` protocol and its backends.

- ``memory`` (``MemoryKeyStore``): one process.
- ``sqlite:///path`` (``SQLiteKeyStore``): the processes of one machine sharing a file (WAL).
- ``redis://host:port/db`` (``RedisKeyStore``): several replicas.

Every store keeps a **revision**, a number that grows with each committed change (in the same transaction
as the change). ``mux.keys.cache.KeyCache`` reads it at most every 250 ms instead of reading the key on each
request, and drops its entries when it moved: that is how a revocation or rotation reaches every worker and
replica (the bound per backend is in ``mux.keys.cache``).

Records are found by hash (``by_hash``: the current or, after a rotation, the previous hash). No two
records share a hash: ``put`` raises ``KeyHashInUse`` rather than make a lookup ambiguous. A backend that
cannot be reached raises ``KeyStoreUnavailable`` (503).
"""

from __future__ import annotations

from typing import Protocol

from mux.errors import MuxError
from mux.keys.model import KeyRecord


class KeyHashInUse(ValueError):
    """``put`` of a record whose key (current or previous) already belongs to another name."""

    def __init__(self, name: str, other: str) -> None:
        super().__init__(f"key '{name}': the same key already belongs to '{other}'")
        self.name, self.other = name, other


class KeyStoreUnavailable(MuxError):
    """The key store cannot be reached, so no key can be checked (fails closed)."""

    status = 503
    type = "server_error"
    code = "key_store_unavailable"


class KeyStore(Protocol):
    async def open(self) -> None:
        """Connect and create what is missing (tables, scripts). Idempotent."""

    async def close(self) -> None: ...

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        """Answer the record whose current or previous hash is ``key_hash``."""

    async def get(self, name: str) -> KeyRecord | None: ...

    async def list(self) -> list[KeyRecord]:
        """Answer every record, by name."""

    async def count(self) -> int: ...

    async def put(self, record: KeyRecord) -> int:
        """Create or replace the record named ``record.name``; answer the new revision. Raise
        ``KeyHashInUse`` if one of its hashes belongs to another name."""

    async def delete(self, name: str) -> bool:
        """Delete (revoke) the record; answer whether it existed. The revision grows only if it did."""

    async def revision(self) -> int:
        """Answer the current revision (0 for a store never written)."""


def key_store(url: str, *, prefix: str = "mux:{keys}:") -> KeyStore:
    """Answer an unopened store for a state URL: ``memory``, ``sqlite:///relative/or//absolute/path`` or
    ``redis://host:port/db`` (``rediss://`` too). ``prefix`` namespaces Redis keys. Raise ``ValueError``
    for another URL."""
    if url == "memory":
        from mux.stores.keys.memory import MemoryKeyStore

        return MemoryKeyStore()
    if url.startswith("sqlite:///"):
        from mux.stores.keys.sqlite import SQLiteKeyStore

        return SQLiteKeyStore(url[len("sqlite:///") :])
    if url.startswith(("redis://", "rediss://", "unix://")):
        from mux.stores.keys.redis import RedisKeyStore

        return RedisKeyStore(url, prefix=prefix)
    raise ValueError(f"unknown state URL {url!r}: expected memory, sqlite:///path or redis://host:port/db")


__all__ = ["KeyHashInUse", "KeyStore", "KeyStoreUnavailable", "key_store"]
