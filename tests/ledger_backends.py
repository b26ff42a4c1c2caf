"""The two ledger stores the ledger tests run on: SQLite in a temporary file, and the real PostgreSQL on
127.0.0.1:5432 (trust auth; ``MUX_TEST_POSTGRES`` overrides the DSN) in a schema made for one test and
dropped after it. PostgreSQL missing is a failure, never a skip."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from mux.ledger import LedgerRow, nano_usd
from mux.ledger.postgres import PostgresLedgerStore
from mux.ledger.row import RowValues, row_values
from mux.ledger.sql import SqlLedgerStore
from mux.ledger.sqlite import SQLiteLedgerStore

PG_DSN = os.environ.get("MUX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


async def _pg(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Backend:
    """Makes (unopened) stores on one test's database."""

    def __init__(self, kind: str, make: Callable[[], SqlLedgerStore]) -> None:
        self.kind = kind
        self.make = make

    def run(self, scenario: Callable[[SqlLedgerStore], Awaitable[Any]]) -> Any:
        """Open a store, run ``scenario(store)`` on a fresh event loop, close the store; answer the result."""

        async def main() -> Any:
            store = self.make()
            await store.open()
            try:
                return await scenario(store)
            finally:
                await store.close()

        return asyncio.run(main())


def values(rows: list[LedgerRow]) -> list[RowValues]:
    """Answer the rows as a store writes them."""
    return [row_values(r) for r in rows]


async def count(store: SqlLedgerStore) -> int:
    (n,) = (await store._fetch(f"SELECT COUNT(*) FROM {store.ledger}", []))[0]
    return n


async def analyze(store: SqlLedgerStore) -> None:
    """Refresh the planner's statistics, as autovacuum (PostgreSQL) or PRAGMA optimize (SQLite) would."""
    await store._fetch("ANALYZE", [])


@pytest.fixture(scope="session")
def postgres_available() -> None:
    try:
        asyncio.run(_pg("SELECT 1"))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_DSN}: {exc!r} (the ledger tests need it)")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = str(tmp_path / "ledger.db")
        yield Backend("sqlite", lambda: SQLiteLedgerStore(path))
        return
    request.getfixturevalue("postgres_available")
    schema = f"mux_ledger_test_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    try:
        yield Backend("postgres", lambda: PostgresLedgerStore(PG_DSN, schema=schema, max_size=2))
    finally:
        asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


KEYS = ["key-a", "key-b", "key-c", None]
TEAMS = ["search", "ads", None]
USERS = ["u1", "u2", "u3", None]
MODELS = [("gpt-4o-mini", "openai"), ("claude-haiku", "anthropic"), ("gemini-flash", "gemini"), (None, None)]
ROUTES = ["production", "canary", None]
# (status, error code): answered, refused, rate-limited, over budget, failed upstream, client gone
OUTCOMES = [
    (200, None),
    (200, None),
    (200, None),
    (401, "invalid_api_key"),
    (402, "budget_exceeded"),
    (429, "rate_limit_exceeded"),
    (502, "upstream_error"),
    (499, "client_closed_request"),
]


def mixed_rows(n: int, *, start: float, span_s: float, seed: int = 7, prefix: str = "req") -> list[LedgerRow]:
    """``n`` rows of every outcome, spread over ``span_s`` seconds from ``start``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        status, error = rng.choice(OUTCOMES)
        model, provider = rng.choice(MODELS) if status < 400 or status >= 500 else (None, None)
        answered = status == 200
        cached = answered and rng.random() < 0.2
        tags = {
            k: v
            for k, v in (("env", rng.choice(["prod", "dev"])), ("app", rng.choice(["chat", "rag"])))
            if rng.random() < 0.8
        }
        rows.append(
            LedgerRow(
                request_id=f"{prefix}-{i:05d}",
                created_at=start + rng.random() * span_s,
                response_id=f"chatcmpl-{prefix}-{i}" if answered else None,
                key_name=rng.choice(KEYS),
                team=rng.choice(TEAMS),
                end_user=rng.choice(USERS),
                tags=tags,
                session_id=rng.choice(["s1", None]),
                model_requested=model or "@production",
                model_used=model,
                provider=provider,
                route=rng.choice(ROUTES),
                route_version=rng.choice([1, 2, None]),
                strategy=rng.choice(["fallback", "latency", None]),
                status=status,
                error_code=error,
                attempts=rng.randint(0, 3),
                prompt_tokens=rng.randint(1, 5000) if answered else 0,
                completion_tokens=rng.randint(1, 900) if answered else 0,
                cached_tokens=rng.randint(0, 1000) if answered else 0,
                cache_write_tokens=rng.randint(0, 200) if answered else 0,
                reasoning_tokens=rng.randint(0, 300) if answered else 0,
                cost_nano=0 if cached or not answered else nano_usd(rng.random() / 100),
                latency_ms=round(rng.uniform(1, 3000), 3),
                ttfb_ms=round(rng.uniform(1, 500), 3) if answered else None,
                stream=rng.random() < 0.5,
                cache_status="hit" if cached else rng.choice(["miss", "skip"]),
                budget_outcome="exceeded" if status == 402 else "admitted",
                rate_limit_outcome="limited" if status == 429 else "admitted",
                finish_reason="stop" if answered else None,
                trace={"schema": 1, "attempts": [{"status": status}]},
            )
        )
    return rows
