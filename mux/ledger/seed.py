"""What a budget had spent before this process started counting it: the request ledger's spend of its scope
since its period began.

Used with ``state: memory`` (whose spend dies with the process) and a ``ledger:``: ``LedgerSeed`` is the
``seed`` of ``mux.stores.spend.memory.MemorySpendStore``, asked once per budget counter (scope and period)
per process, before the first reservation in it. SQLite and Redis state keep their spend across restarts:
seeding them would count it twice.

Exactly once: the seed first has the writer write every row this process has queued (a request outside this
counter until now — a budget added by a reload, a key given a budget — may have spent in its scope), then
sums the ledger. A request of this process can reserve in the counter only once the seed is in it, and its
row reaches the ledger only after it settled, so no row is both in the seed and in the counter's settles.
The ledger dates a row by its arrival and a budget a request by its reservation, a moment later: a request
arriving in one period and reserving in the next is counted in the next until a restart, in neither after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mux.money.scopes import conditions
from mux.stores import StoreUnavailable

if TYPE_CHECKING:
    from mux.ledger.writer import LedgerWriter

FLUSH_TIMEOUT_S = 5.0


def ledger_filters(scope_key: str) -> dict[str, Any]:
    """Answer the ``LedgerStore.spend`` filters selecting the requests the budget scope key ``scope_key``
    counts: its key name, team, end user and tags, all of them at once (none for ``global``)."""
    c = conditions(scope_key)
    filters: dict[str, Any] = {}
    if c.key is not None:
        filters["key_name"] = c.key
    if c.team is not None:
        filters["team"] = c.team
    if c.end_user is not None:
        filters["end_user"] = c.end_user
    if c.tags:
        filters["tags"] = c.tags
    return filters


class LedgerSeed:
    """``await seed(scope_key, since)``: the nano-USD the ledger of ``writer`` holds for ``scope_key`` since the
    epoch second ``since``, once the rows queued before the call are written. Raises ``StoreUnavailable`` when
    the rows are not written within ``flush_timeout_s`` or the store cannot answer."""

    def __init__(self, writer: LedgerWriter, *, flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        self.writer = writer
        self.flush_timeout_s = flush_timeout_s

    async def __call__(self, scope_key: str, since: int) -> int:
        filters = ledger_filters(scope_key)
        if not await self.writer.flush(self.flush_timeout_s):
            raise StoreUnavailable(f"the request ledger did not take its queued rows within {self.flush_timeout_s} s")
        try:
            return await self.writer.store.spend(float(since), **filters)
        except Exception as exc:  # the store's failure, whatever its driver calls it
            raise StoreUnavailable(f"the request ledger cannot be read: {type(exc).__name__}") from exc
