"""Keys kept in this process's memory: for one process (and tests). Lost at exit; config keys come back
at the next start."""

from __future__ import annotations

from mux.keys.model import KeyRecord
from mux.stores.keys import KeyHashInUse
from mux.stores.lifecycle import Lifecycle


class MemoryKeyStore(Lifecycle):
    """A ``KeyStore`` in two dicts: records by name, names by hash."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._names: dict[str, str] = {}
        self._revision = 0

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        name = self._names.get(key_hash)
        return self._records.get(name) if name is not None else None

    async def get(self, name: str) -> KeyRecord | None:
        return self._records.get(name)

    async def list(self) -> list[KeyRecord]:
        return [self._records[name] for name in sorted(self._records)]

    async def count(self) -> int:
        return len(self._records)

    async def put(self, record: KeyRecord) -> int:
        for h in record.hashes():
            owner = self._names.get(h)
            if owner is not None and owner != record.name:
                raise KeyHashInUse(record.name, owner)
        self._unindex(record.name)
        self._records[record.name] = record
        for h in record.hashes():
            self._names[h] = record.name
        self._revision += 1
        return self._revision

    async def delete(self, name: str) -> bool:
        if name not in self._records:
            return False
        self._unindex(name)
        del self._records[name]
        self._revision += 1
        return True

    async def revision(self) -> int:
        return self._revision

    def _unindex(self, name: str) -> None:
        old = self._records.get(name)
        if old is not None:
            for h in old.hashes():
                self._names.pop(h, None)
