"""Process tuning the standalone gateway applies once it has started: the garbage collector.

A gateway's start-up objects (modules, config, catalog, compiled routes: tens of thousands of containers) live
as long as the process; with Python's default collector settings every older-generation collection walks all
of them again, and the young generation is collected every 700 allocations, promoting the objects of every
request in flight. ``tune_gc`` moves what is alive after start-up into the permanent generation
(``gc.freeze``) and raises the young threshold well above what the requests in flight hold alive (the
collector counts allocations net of deallocations: with 700, a busy gateway's in-flight objects alone set off
collection after collection, each walking all of them), so collections walk only what requests allocate, and
rarely: most request garbage is freed by reference counting long before. Reads and writes only ``gc``.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # net allocations between young collections (Python's default: 700)


def tune_gc(young: int = YOUNG_THRESHOLD) -> None:
    """Freeze every object alive now out of the collector's sight and collect the young generation every
    ``young`` allocations (the older ones every 50 and 100 young collections)."""
    gc.freeze()  # (no collection first: start-up leaves little garbage, and a full one costs ~0.1 s)
    gc.set_threshold(young, 50, 100)
