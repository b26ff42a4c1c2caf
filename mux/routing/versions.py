"""Versions of routing configs: a content hash, and a number per route that only grows.

The store remembers every version of every route it has seen, so an earlier one can be served again
(rollback). ``MemoryVersions`` is the embedded default; ``SQLiteVersions`` keeps the history in a file
across restarts. Both answer the same version for the same content, so reloading an unchanged config is a
no-op.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
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


class Versions(Protocol):
    def assign(self, name: str, route: RouteConfig) -> tuple[int, str]:
        """Answer the version and hash of ``route`` under ``name``, recording a new version if it is new."""

    def history(self, name: str) -> list[VersionRecord]:
        """Answer every recorded version of ``name``, oldest first."""

    def get(self, name: str, version: int) -> VersionRecord | None: ...


class MemoryVersions:
    """Versions kept in this process."""

    def __init__(self) -> None:
        self._records: dict[str, list[VersionRecord]] = {}
        self._lock = threading.Lock()

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
    """Versions kept in a SQLite file (one table), shared by the processes that open the same file."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS route_versions (name TEXT NOT NULL, version INTEGER NOT NULL, "
            "hash TEXT NOT NULL, config BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (name, version))"
        )

    def assign(self, name: str, route: RouteConfig) -> tuple[int, str]:
        digest = content_hash(route)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT version FROM route_versions WHERE name = ? AND hash = ?",
                                       (name, digest)).fetchone()
                if row is not None:
                    self._db.execute("COMMIT")
                    return row[0], digest
                (latest,) = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM route_versions WHERE name = ?",
                                             (name,)).fetchone()
                self._db.execute("INSERT INTO route_versions VALUES (?, ?, ?, ?, ?)",
                                 (name, latest + 1, digest, msgspec.json.encode(route), time.time()))
                self._db.execute("COMMIT")
                return latest + 1, digest
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _record(self, row) -> VersionRecord:
        name, version, digest, config, created = row
        return VersionRecord(name, version, digest, msgspec.json.decode(config, type=RouteConfig), created)

    def history(self, name: str) -> list[VersionRecord]:
        rows = self._db.execute("SELECT name, version, hash, config, created FROM route_versions WHERE name = ? "
                                "ORDER BY version", (name,)).fetchall()
        return [self._record(r) for r in rows]

    def get(self, name: str, version: int) -> VersionRecord | None:
        row = self._db.execute("SELECT name, version, hash, config, created FROM route_versions WHERE name = ? "
                               "AND version = ?", (name, version)).fetchone()
        return self._record(row) if row else None
