"""State behind small protocols: spend (budgets) and rate limits, each in memory, SQLite or Redis.

``state_url.parse_state_url`` reads the ``state:`` setting; ``spend`` and ``limits`` hold the Protocols,
their typed answers and a factory per backend. Every store is async, opened and closed explicitly
(``await store.open()`` / ``await store.close()``, or ``async with store``), never blocks the event loop and
takes its clock as a callable so tests can move time. The plumbing the backends of one kind share lives in
``lifecycle`` (open/close, ``async with``), ``sqlite_file`` and ``redis_server``.
"""


class StoreUnavailable(RuntimeError):
    """The state backend did not answer (Redis unreachable, SQLite locked past its busy timeout).

    The message names the cause and never a secret (no password of a Redis URL).
    """
