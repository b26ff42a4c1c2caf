"""Keeping the live routing state in step: reload on a signal, and follow reloads made by other processes.

``RoutingSync`` is a resource (``mux.resources``): opened at lifespan startup, it installs the signal handlers
asked for with ``reload_on`` on the event loop (so a reload never runs inside a signal handler, where it could
wait on a lock its own thread holds) and, when the routing state is shared with other processes (a SQLite
``state_path``), checks it every ``interval_s`` in a thread, so a reload or rollback made in another worker is
served here too. Closing removes the handlers and stops the checks. Store and source reads run in threads,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from mux.routing.live import LiveRouting


class RoutingSync:
    def __init__(self, routing: LiveRouting, *, interval_s: float = 0.25, logger: Any = None) -> None:
        self.routing = routing
        self.interval_s = interval_s
        self.logger = logger or structlog.get_logger("mux.admin")
        self._signals: set[int] = set()
        self._installed: list[int] = []
        self._tasks: set[asyncio.Task] = set()

    def reload_on(self, signum: int) -> None:
        """Reload the config source when the process receives ``signum`` (e.g. SIGHUP), once opened."""
        self._signals.add(signum)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            try:
                loop.add_signal_handler(signum, self._spawn, self.reload)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no such signals
                self.logger.warning("reload_signal_not_installed", signal=signal.Signals(signum).name)
            else:
                self._installed.append(signum)
        if self.routing.shared:
            self._spawn(self._watch)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> None:
        """Re-read the config source in a thread and serve it (in every process sharing the routing state);
        log ``config_reloaded`` with the route versions, or ``config_reload_failed`` (the old config keeps
        serving)."""
        try:
            versions = await asyncio.to_thread(self.routing.reload)
        except Exception as exc:  # a bad config file, or a state file that cannot be written
            self.logger.error("config_reload_failed", error=str(exc))
        else:
            self.logger.info("config_reloaded", routes=versions)
            await self.routing.after_reload(self.logger)

    async def _watch(self) -> None:
        """Every ``interval_s``, serve what another process recorded in the shared routing state."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                changed = await asyncio.to_thread(self.routing.sync)
            except Exception as exc:
                self.logger.error("config_sync_failed", generation=self.routing.generation, error=str(exc))
            else:
                if changed:
                    self.logger.info(
                        "config_synced",
                        generation=self.routing.generation,
                        routes={name: r.version for name, r in self.routing.routes.items()},
                    )
