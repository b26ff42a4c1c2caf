"""What every store answers about its life: ``open``, ``close`` and ``async with``.

``Lifecycle`` is the store in memory (both do nothing). ``Connected`` is a store that holds one connection (a
SQLite connection, a Redis client, a PostgreSQL pool) while it is open: ``open`` makes it once (a second
``open`` does nothing), ``close`` lets it go (a second ``close`` does nothing), and a call on a store that is
not open raises RuntimeError naming the store. ``mux.stores.sqlite_file.SqliteBacked`` and
``mux.stores.redis_server.RedisBacked`` are the two kinds built on it.
"""

from __future__ import annotations

from typing import Generic, Self, TypeVar

H = TypeVar("H")


class Lifecycle:
    """``open`` and ``close`` that do nothing, and ``async with`` over them."""

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Connected(Lifecycle, Generic[H]):
    """A store holding one connection ``H`` while open. Subclasses say how to make it (``_connect``), how to
    let it go (``_disconnect``) and their name for "not open" messages (``_name``)."""

    _name = "the store"
    _held: H | None = None

    async def _connect(self) -> H:
        """Answer a new, ready connection (raise if there is none to be had)."""
        raise NotImplementedError

    async def _disconnect(self, held: H) -> None:
        """Let ``held`` go."""
        raise NotImplementedError

    async def open(self) -> None:
        if self._held is None:
            self._held = await self._connect()

    async def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._disconnect(held)

    def _check_open(self) -> None:
        """Raise RuntimeError ("<_name> is not open") when the store is not open."""
        if self._held is None:
            raise RuntimeError(f"{self._name} is not open")

    def _conn(self) -> H:
        """Answer the connection; raise RuntimeError ("<_name> is not open") when the store is not open."""
        self._check_open()
        return self._held  # type: ignore[return-value]
