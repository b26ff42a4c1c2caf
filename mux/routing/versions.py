"""Versions of routing configs: a content hash, and a number per route that only grows; and what is served.

The store remembers every version of every route it has seen, so an earlier one can be served again
(rollback). ``MemoryVersions`` is the embedded default; ``SQLiteVersions`` keeps the history in a file
across restarts. Both answer the same version for the same content, so reloading an unchanged config is a
no-op.

The store also records what should be served (``Served``): a generation that grows with every reload and
rollback, and the rollbacks in force. Processes sharing a SQLite file (the workers of one gateway) compare
the generation to learn that another process reloaded or rolled back.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import msgspec

from mux.config import RouteConfig

_encoder = msgspec.json.Encoder(order="sorted")


def content_hash(route: RouteConfig) -> str:
    """Answer a short, stable hash of a route's content (key order and formatting do not matter)."""
    return hashlib.sha256(_encoder.encode(route)).hexdigest()[:16]


class VersionRecord(msgspec.Struct, frozen=True):
    name: str
    version: int
    hash: str
    config: RouteConfig
    created: float


class Served(msgspec.Struct, frozen=True):
    """What the processes sharing a store serve. ``generation`` grows with every reload and rollback;
    ``reload`` is the generation of the latest reload (the config source is re-read when it moves); ``pins``
    maps a route name to the version a rollback put in force (a reload clears them)."""

    generation: int = 0
    reload: int = 0
    pins: dict[str, int] = {}


class Versions(Protocol):
    shared: bool  # whether other processes may change what is served (then each polls ``served()``)

    def served(self) -> Served:
        """Answer what is served now."""

    def record_reload(self) -> Served:
        """Record a reload (a new generation, no rollbacks in force); answer what is served after it."""

    def record_rollback(self, name: str, version: int) -> Served:
        """Record that route ``name`` serves ``version`` (a new generation); answer what is served after it."""

    def assign(self, name: str, route: RouteConfig) -> tuple[int, str]:
        """Answer the version and hash of ``route`` under ``name``, recording a new version if it is new."""

    def history(self, name: str) -> list[VersionRecord]:
        """Answer every recorded version of ``name``, oldest first."""

    def get(self, name: str, version: int) -> VersionRecord | None: ...


class MemoryVersions:
    """Versions kept in this process."""

    shared = False

    def __init__(self) -> None:
        self._records: dict[str, list[VersionRecord]] = {}
        self._served = Served()
        self._lock = threading.Lock()

    def served(self) -> Served:
        return self._served

    def record_reload(self) -> Served:
        with self._lock:
            generation = self._served.generation + 1
            self._served = Served(generation, generation, {})
            return self._served

    def record_rollback(self, name: str, version: int) -> Served:
        with self._lock:
            served = self._served
            self._served = Served(served.generation + 1, served.reload, {**served.pins, name: version})
            return self._served

    def assign(self, name: str, route: RouteConfig) -> tuple[int, str]:
        digest = content_hash(route)
        with self._lock:
            records = self._records.setdefault(name, [])
            for record in records:
                if record.hash == digest:
                    return record.version, digest
            version = records[-1].version + 1 if records else 1
            records.append(VersionRecord(name, version, digest, route, time.time()))
            return version, digest

    def history(self, name: str) -> list[VersionRecord]:
        return list(self._records.get(name, ()))

    def get(self, name: str, version: int) -> VersionRecord | None:
        return next((r for r in self._records.get(name, ()) if r.version == version), None)


class SQLiteVersions:
    """Versions kept in a SQLite file, shared by the processes that open the same file. Safe to call from
    several threads; each call may wait for another process's write (SQLite's busy timeout, 5 s)."""

    shared = True

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS route_versions (name TEXT NOT NULL, version INTEGER NOT NULL, "
                "hash TEXT NOT NULL, config BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (name, version))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS served (id INTEGER PRIMARY KEY CHECK (id = 0), "
                "generation INTEGER NOT NULL, reload INTEGER NOT NULL)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS served_pins (name TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO served VALUES (0, 0, 0)")

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        with self._lock:
            self._db.execute(begin)
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _served(self) -> Served:
        generation, reload = self._db.execute("SELECT generation, reload FROM served").fetchone()
        return Served(generation, reload, dict(self._db.execute("SELECT name, version FROM served_pins")))

    def served(self) -> Served:
        with self._transaction("BEGIN"):  # one snapshot of both tables
            return self._served()

    def record_reload(self) -> Served:
        with self._transaction():
            self._db.execute("UPDATE served SET generation = generation + 1, reload = generation + 1")
            self._db.execute("DELETE FROM served_pins")
            return self._served()

    def record_rollback(self, name: str, version: int) -> Served:
        with self._transaction():
            self._db.execute("UPDATE served SET generation = generation + 1")
            self._db.execute("INSERT OR REPLACE INTO served_pins VALUES (?, ?)", (name, version))
            return self._served()

    def assign(self, name: str, route: RouteConfig) -> tuple[int, str]:
        digest = content_hash(route)
        with self._transaction():
            row = self._db.execute(
                "SELECT version FROM route_versions WHERE name = ? AND hash = ?", (name, digest)
            ).fetchone()
            if row is not None:
                return row[0], digest
            (latest,) = self._db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM route_versions WHERE name = ?", (name,)
            ).fetchone()
            self._db.execute(
                "INSERT INTO route_versions VALUES (?, ?, ?, ?, ?)",
                (name, latest + 1, digest, msgspec.json.encode(route), time.time()),
            )
            return latest + 1, digest

    def _record(self, row) -> VersionRecord:
        name, version, digest, config, created = row
        return VersionRecord(name, version, digest, msgspec.json.decode(config, type=RouteConfig), created)

    def history(self, name: str) -> list[VersionRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, version, hash, config, created FROM route_versions WHERE name = ? ORDER BY version",
                (name,),
            ).fetchall()
        return [self._record(r) for r in rows]

    def get(self, name: str, version: int) -> VersionRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, version, hash, config, created FROM route_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
        return self._record(row) if row else None
