"""A short-lived, per-process cache of key lookups in front of a ``KeyStore``, and the one call the
AuthLayer needs: ``KeyCache.authenticate(raw_key)``.

The request path reads nothing from the store in the common case: a lookup (found or not) is kept for at
most ``ttl_s`` (1 s), and the store's **revision** is read at most every ``check_every_s`` (250 ms); when it
moved, every entry is dropped at once. So a revocation, rotation, expiry edit or disable committed anywhere
is honoured by every worker and replica

- within ``check_every_s`` plus one revision read (one GET on Redis, one SELECT on SQLite; sub-millisecond
  on a healthy store) — 250 ms by default — for ``redis://`` (all replicas), ``sqlite:///`` (all processes on
  the file) and ``memory`` (caches in the one process over the same store);
- and never later than ``ttl_s`` (1 s), whatever the store does: if the revision cannot be read, entries
  still expire after ``ttl_s``, and the next lookup goes to the store — which then raises
  ``KeyStoreUnavailable`` (answer 503: keys fail closed).

A cache's own process sees its own writes at once if it calls ``clear()`` after them (the admin API does).
The bound counts from the start of the last revision read, so a slow read delays requests, not revocations.
Cost on the request path: two dict lookups (the hash of a key presented lately is remembered in the
process, for at most ``max_entries`` keys; otherwise one HMAC-SHA256, or SHA-256, of the key); one store read
per distinct key per ``ttl_s``, plus one revision read per ``check_every_s`` per process.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from mux.keys.decide import MISSING, check
from mux.keys.hashing import hash_key
from mux.keys.model import KeyRecord
from mux.stores.keys import KeyStore, KeyStoreUnavailable


class KeyCache:
    """Lookups by hash, cached per the bounds above. ``clock`` is monotonic seconds (entry ages, checks),
    ``wall`` epoch seconds (key expiry); both injectable for tests."""

    def __init__(
        self,
        store: KeyStore,
        *,
        secret: str | bytes | None = None,
        ttl_s: float = 1.0,
        check_every_s: float = 0.25,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= check_every_s <= ttl_s:
            raise ValueError("check_every_s must be between 0 and ttl_s")
        self.store = store
        self.secret = secret
        self.ttl_s = ttl_s
        self.check_every_s = check_every_s
        self.max_entries = max_entries
        self._clock = clock
        self._wall = wall
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}
        self._hashes: dict[str, str] = {}  # raw key -> its hash, in this process's memory only
        self._count: tuple[float, int] | None = None
        self._revision: int | None = None
        self._generation = 0  # grows at each drop, so a read that straddles one is not cached
        self._verified_at = -math.inf  # when the last successful revision read started
        self._failed_at = -math.inf  # when the last failed one started
        self._reading: asyncio.Future[None] | None = None  # the revision read under way, shared by its waiters

    def clear(self) -> None:
        """Drop every entry and read the revision again on the next lookup."""
        self._entries.clear()
        self._count = None
        self._generation += 1
        self._verified_at = -math.inf

    async def _sync(self) -> None:
        """Read the store's revision if the last read started ``check_every_s`` ago or more; drop the entries
        when it moved. A failed read is retried after ``check_every_s``; meanwhile entries keep only ``ttl_s``."""
        if self._clock() - self._verified_at < self.check_every_s:
            return
        reading = self._reading
        if reading is None:
            started = self._clock()
            if started - max(self._verified_at, self._failed_at) < self.check_every_s:
                return  # the last read failed just now: entries keep only ttl_s meanwhile
            reading = self._reading = asyncio.ensure_future(self._read_revision(started))
        # every lookup that finds the read due waits for the same one and resumes with the others (a lock would
        # hand the turn to its waiters one event-loop iteration at a time)
        await asyncio.shield(reading)

    async def _read_revision(self, started: float) -> None:
        try:
            try:
                revision = await self.store.revision()
            except KeyStoreUnavailable:
                self._failed_at = started
                return
            if revision != self._revision:
                self._entries.clear()
                self._count = None
                self._generation += 1
                self._revision = revision
            self._verified_at = started
        finally:
            self._reading = None

    async def lookup(self, key_hash: str) -> KeyRecord | None:
        """Answer the record for ``key_hash`` (current or previous hash), ``None`` if there is none; raise
        ``KeyStoreUnavailable`` when the store must be read and cannot be."""
        await self._sync()
        fetched_at = self._clock()
        entry = self._entries.get(key_hash)
        if entry is not None and fetched_at - entry[0] < self.ttl_s:
            return entry[1]
        generation = self._generation
        record = await self.store.by_hash(key_hash)
        if generation == self._generation:
            self._entries.pop(key_hash, None)
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest read
            self._entries[key_hash] = (fetched_at, record)
        return record

    async def any_keys(self) -> bool:
        """Whether the store holds any key (then every API request needs one), cached like a lookup."""
        await self._sync()
        fetched_at = self._clock()
        if self._count is not None and fetched_at - self._count[0] < self.ttl_s:
            return self._count[1] > 0
        generation = self._generation
        count = await self.store.count()
        if generation == self._generation:
            self._count = (fetched_at, count)
        return count > 0

    def _hash(self, raw_key: str) -> str:
        """Answer ``hash_key(raw_key, secret)``, remembered for the last ``max_entries`` keys presented."""
        key_hash = self._hashes.get(raw_key)
        if key_hash is None:
            key_hash = hash_key(raw_key, self.secret)
            if len(self._hashes) >= self.max_entries:
                self._hashes.clear()
            self._hashes[raw_key] = key_hash
        return key_hash

    def known_empty(self) -> bool:
        """Whether the store is known to hold no key, answered without I/O: ``any_keys`` found none within
        ``ttl_s`` and the revision was read within ``check_every_s``, so the bounds above hold. ``False``
        means "ask ``any_keys``", not "keys exist"."""
        count = self._count
        if count is None or count[1]:
            return False
        now = self._clock()
        return now - count[0] < self.ttl_s and now - self._verified_at < self.check_every_s

    def authenticated(self, raw_key: str | None) -> KeyRecord | None:
        """``authenticate`` answered without I/O: the record when the key's lookup is cached and the bounds
        above hold for it (the revision read within ``check_every_s``, the entry younger than ``ttl_s``) and
        it passes; ``None`` means "ask ``authenticate``" (a key that may not pass answers ``None`` too)."""
        if not raw_key:
            return None
        now = self._clock()
        if now - self._verified_at >= self.check_every_s:
            return None
        key_hash = self._hash(raw_key)
        entry = self._entries.get(key_hash)
        if entry is None or now - entry[0] >= self.ttl_s or entry[1] is None:
            return None
        record = entry[1]
        return record if check(record, self._wall(), key_hash) is None else None

    async def authenticate(self, raw_key: str | None) -> KeyRecord:
        """Answer the record of the key a request presents (``mux.keys.decide.key_from_headers``); raise the
        denial's ``MuxError`` (401 or 403, see ``mux.keys.decide``) or ``KeyStoreUnavailable`` (503)."""
        if not raw_key:
            raise MISSING.error()
        key_hash = self._hash(raw_key)
        record = await self.lookup(key_hash)
        denial = check(record, self._wall(), key_hash)
        if denial is not None:
            raise denial.error()
        assert record is not None
        return record
