"""The ``state:`` setting: ``memory``, ``sqlite:///path`` or ``redis://host:port/db``, parsed into a Struct.

``sqlite:///mux-state.db`` is relative to the working directory, ``sqlite:////var/lib/mux/state.db`` absolute.
``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS); port 6379 and db 0 by default. Anything
else is refused with a ValueError saying what is accepted; no message repeats a password.
"""

from __future__ import annotations

from typing import Union
from urllib.parse import quote, unquote, urlsplit

from msgspec import Struct

ACCEPTED = "expected 'memory', 'sqlite:///relative/path', 'sqlite:////absolute/path' or 'redis://host:port/db'"


class MemoryState(Struct, frozen=True, tag="memory"):
    """State in this process only."""


class SqliteState(Struct, frozen=True, tag="sqlite"):
    """State in one SQLite file that the workers of one machine share."""

    path: str


class RedisState(Struct, frozen=True, tag="redis"):
    """State in one Redis database that several replicas share."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def url(self) -> str:
        """Answer the URL for ``redis.asyncio.Redis.from_url`` (it holds the password: never log it)."""
        auth = ""
        if self.password is not None or self.username is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/{self.db}"

    def __repr__(self) -> str:
        secret = ", password=***" if self.password is not None else ""
        return f"RedisState(host={self.host!r}, port={self.port}, db={self.db}{secret}, tls={self.tls})"

    __str__ = __repr__


StateURL = Union[MemoryState, SqliteState, RedisState]


def parse_state_url(text: str) -> StateURL:
    """Answer the state backend named by ``text``; raise ValueError (naming what is accepted) otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"state must be a string: {ACCEPTED}")
    if text == "memory":
        return MemoryState()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme == "sqlite":
        return _sqlite(text)
    if scheme in ("redis", "rediss"):
        return _redis(text, tls=scheme == "rediss")
    shown = text if "@" not in text else scheme + "://…"
    raise ValueError(f"unsupported state {shown!r}: {ACCEPTED}")


def _sqlite(text: str) -> SqliteState:
    rest = text[len("sqlite://") :]
    if not rest.startswith("/"):
        raise ValueError(f"state {text!r} names a host; {ACCEPTED} (three slashes before a relative path)")
    path = rest[1:]
    if "?" in path or "#" in path:
        raise ValueError(f"state {text!r}: a SQLite state URL takes no query or fragment")
    if not path or path.endswith("/"):
        raise ValueError(f"state {text!r} names no file: {ACCEPTED}")
    if path == ":memory:":
        raise ValueError("state 'sqlite:///:memory:' would not be shared by anyone: use 'memory'")
    return SqliteState(path=path)


def _redis(text: str, *, tls: bool) -> RedisState:
    scheme = "rediss" if tls else "redis"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"state {scheme}://… has an invalid host or port: {ACCEPTED}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"state {scheme}://… takes no query or fragment: {ACCEPTED}")
    if not parts.hostname:
        raise ValueError(f"state {scheme}://… names no host: {ACCEPTED}")
    db_text = parts.path[1:] if parts.path.startswith("/") else parts.path
    if db_text and not db_text.isdigit():
        raise ValueError(f"state {scheme}://… has database {db_text!r}; the database is a number such as /0")
    return RedisState(
        host=parts.hostname,
        port=6379 if port is None else port,
        db=int(db_text) if db_text else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )
