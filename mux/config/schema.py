"""The configuration's shape: typed Structs for every key a config file may hold.

Unknown keys are refused (``forbid_unknown_fields``), so a typo in a YAML file stops the gateway before it
serves. Reading, interpolating and cross-checking a file is ``mux.config.load``.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import msgspec
from msgspec import Meta, Struct

from mux.catalog.models import ModelInfo
from mux.keys.spec import KeySpec

DEFAULT_STATE = "sqlite:///mux-state.db"
PositiveSeconds = Annotated[float, Meta(gt=0)]
ProviderName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class ConfigError(Exception):
    """A configuration that cannot be served; the message names the key path and the problem."""


class ProviderConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """One upstream provider. ``name`` is the prefix in ``name/model``; ``type`` picks the adapter."""

    name: ProviderName
    type: str
    base_url: str = ""
    api_key: str | None = None
    timeout_s: PositiveSeconds = 600.0  # the whole attempt, streams included
    connect_timeout_s: PositiveSeconds = 10.0
    first_byte_timeout_s: PositiveSeconds | None = None  # until response headers; defaults to timeout_s
    idle_timeout_s: PositiveSeconds = 120.0  # longest silence between two reads of the body
    models: list[str] = []
    headers: dict[str, str] = {}  # extra upstream headers, e.g. OpenAI-Organization
    api_version: str | None = None  # Azure OpenAI's api-version query parameter
    project: str | None = None  # Vertex AI's project id
    location: str | None = None  # Vertex AI's region (default us-central1)

    def __repr__(self) -> str:
        key = "***" if self.api_key else None
        return f"ProviderConfig(name={self.name!r}, type={self.type!r}, base_url={self.base_url!r}, api_key={key})"

    def url_for(self, path: str) -> str:
        """Answer the base URL joined with ``path``."""
        return self.base_url.rstrip("/") + path

    def serves(self, model: str) -> bool:
        """Whether ``model`` is in this provider's declared model list."""
        return model in self.models


class ServerConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    max_body_mb: Annotated[float, Meta(gt=0, le=1024)] = 10.0
    access_log: bool = False
    admin_token: str | None = None  # enables /admin/* with "Authorization: Bearer <token>"
    state_path: str | None = None  # SQLite file keeping route versions across restarts (default: memory)
    key_secret: str | None = None  # keys are stored as HMAC-SHA256(key_secret, sha256(key)); else sha256(key)
    gc_tune: bool = True  # standalone gateway: freeze start-up objects, collect rarely (mux.runtime)

    def __repr__(self) -> str:
        hidden = {"admin_token", "key_secret"}
        fields = ", ".join(
            f"{f}={'***' if f in hidden and getattr(self, f) else getattr(self, f)!r}" for f in self.__struct_fields__
        )
        return f"ServerConfig({fields})"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


# An upstream status (429, 503, ...) or a class of failure: any 5xx, a timeout, a connection failure.
RetryClass = Annotated[int, Meta(ge=400, le=599)] | Literal["5xx", "timeout", "connect"]
Strategy = Literal["single", "fallback", "weighted", "latency", "cost", "cascade", "ab_test"]
CascadeCheck = Literal["error", "refusal", "length", "invalid_json"]


class RouteTarget(Struct, kw_only=True, forbid_unknown_fields=True):
    """One target of a routing config: a model identifier (``provider/model``, a bare name or ``@route``)."""

    model: Annotated[str, Meta(min_length=1)]
    timeout_ms: Annotated[int, Meta(gt=0)] | None = None  # this attempt's whole time
    weight: Annotated[float, Meta(ge=0)] = 1.0  # weighted and ab_test
    retries: Annotated[int, Meta(ge=0, le=5)] = 0  # extra attempts at this same target


class CascadeConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """When to escalate from a cheaper target to the next: the failed checks, and an optional validator."""

    checks: list[CascadeCheck] = msgspec.field(default_factory=lambda: ["error", "refusal", "length", "invalid_json"])
    validator: str | None = None  # "module:function", called with (request, completion dict) -> bool


class RouteConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """A named, versioned routing config, used as ``"model": "@name"``."""

    strategy: Strategy = "fallback"
    targets: Annotated[list[RouteTarget], Meta(min_length=1)]
    retry_on: list[RetryClass] = msgspec.field(default_factory=lambda: [429, "5xx", "timeout", "connect"])
    total_timeout_ms: Annotated[int, Meta(gt=0)] | None = None
    sticky: Literal["end_user", "session"] | None = None  # weighted and ab_test assignment
    cascade: CascadeConfig | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=20)] | None = None


class HealthConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """Shared health: circuit breakers, rate-limit cooling, retry budget and backoff (README: "Health")."""

    breaker_failures: Annotated[int, Meta(ge=1)] = 5  # consecutive failures that open a target's breaker
    breaker_cooldown_s: PositiveSeconds = 30.0  # open time before a half-open probe
    cooldown_429_s: Annotated[float, Meta(ge=0)] = 1.0  # a 429 without Retry-After cools its target this long
    cooldown_429_max_s: Annotated[float, Meta(ge=0)] = 60.0  # the longest a Retry-After cools a target
    retry_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.2  # retries allowed per recent request
    retry_floor_per_s: Annotated[float, Meta(ge=0)] = 2.0  # retries always allowed per second
    backoff_base_ms: Annotated[int, Meta(ge=0)] = 50
    backoff_max_ms: Annotated[int, Meta(ge=0)] = 2000
    latency_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.3  # EWMA weight of the newest latency


class LedgerConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """The request ledger (``mux.ledger``): one row per LLM request, written in batches off the request path.
    Off unless the config has a ``ledger:`` section (``ledger: {}`` is the embedded SQLite default)."""

    store: str = "sqlite:///mux.db"  # or postgresql://user:password@host:5432/db
    schema: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")] = "public"  # PostgreSQL schema
    store_bodies: bool = False  # keep the request and response bodies too
    batch_rows: Annotated[int, Meta(ge=1, le=10_000)] = 500  # rows per write at most
    flush_ms: Annotated[float, Meta(gt=0, le=60_000)] = 5.0  # the longest a row waits for its batch to fill
    max_queue: Annotated[int, Meta(ge=1)] = 100_000  # rows waiting at most; beyond, rows are dropped and counted
    shutdown_timeout_s: PositiveSeconds = 30.0  # at shutdown, rows not written by then are counted lost and logged

    def __post_init__(self) -> None:
        if not (
            self.store.startswith(("postgresql://", "postgres://"))
            or (self.store.startswith("sqlite:///") and len(self.store) > len("sqlite:///"))
        ):
            raise ValueError("store must be sqlite:///FILE or postgresql://…")

    def __repr__(self) -> str:
        return (
            f"LedgerConfig(store={masked_url(self.store)!r}, schema={self.schema!r}, store_bodies={self.store_bodies})"
        )

    @property
    def secrets(self) -> list[str]:
        """The password in the store URL, as written and decoded, if any (to keep out of logs)."""
        password = urlsplit(self.store).password
        return [password, unquote(password)] if password else []


def masked_url(url: str) -> str:
    """Answer ``url`` with the password of its user info replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    user, at, host = rest.rpartition("@")
    if not at or ":" not in user:
        return url
    return f"{scheme}{sep}{user.split(':', 1)[0]}:***@{host}"


# ---- budgets and rate limits (BudgetLayer, RateLimitLayer) -----------------------------------------------

LimitName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
ScopeValue = Annotated[str, Meta(min_length=1, max_length=256)]


class ScopeConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """Whom a budget or a rate limit applies to. Each field set must match (all of them); ``"*"`` matches any
    value and gives each value its own counter. No field at all: every request, one shared counter."""

    key: ScopeValue | None = None  # a virtual key's name
    end_user: ScopeValue | None = None  # mlx:end_user, x-mux-end-user or user
    tag: Annotated[dict[ScopeValue, ScopeValue], Meta(min_length=1)] | None = None  # tag -> value
    team: ScopeValue | None = None  # the virtual key's team


class BudgetConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """A spend cap in USD over a calendar period (UTC). ``action``: ``block`` refuses with 402, ``warn`` only
    reports (headers), ``downgrade`` serves the requests that do not fit through the route ``to``."""

    name: LimitName
    usd: Annotated[float, Meta(ge=0)]
    period: Literal["day", "week", "month", "total"] = "total"
    scope: ScopeConfig = msgspec.field(default_factory=ScopeConfig)
    warn_at: Annotated[float, Meta(gt=0, le=1)] | None = None  # fraction of the cap that adds a warning header
    action: Literal["block", "warn", "downgrade"] = "block"
    to: str | None = None  # downgrade: the "@route" that serves requests over the cap
    fail_open: bool = False  # serve, unbudgeted, while the state store is unreachable (default: 503)


class RateLimitConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    """Requests (``rpm``) and tokens (``tpm``) per minute for a scope; at least one of them."""

    name: LimitName
    scope: ScopeConfig = msgspec.field(default_factory=ScopeConfig)
    rpm: Annotated[int, Meta(ge=1)] | None = None
    tpm: Annotated[int, Meta(ge=1)] | None = None


# ---- the whole file -------------------------------------------------------------------------------------


class Config(Struct, kw_only=True, forbid_unknown_fields=True):
    providers: list[ProviderConfig] = []
    catalog: dict[str, ModelInfo] = {}  # "<provider name or type>/<model>": limits, abilities, prices
    routes: dict[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+$")], RouteConfig] = {}
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    ledger: LedgerConfig | None = None  # the request ledger; off when absent
    keys: list[KeySpec] = []  # virtual keys (mux.keys.spec); more are made through /admin/keys
    # ---- budgets, rate limits and their state ----
    budgets: list[BudgetConfig] = []
    rate_limits: list[RateLimitConfig] = []
    state: str = DEFAULT_STATE  # where keys, budgets and limits live: memory, sqlite:///path, redis://host:port/db
    state_prefix: Annotated[str, Meta(min_length=1, max_length=64)] = "mux:"  # Redis key prefix

    def provider(self, name: str) -> ProviderConfig | None:
        """Answer the provider called ``name``, if configured."""
        for provider in self.providers:
            if provider.name == name:
                return provider
        return None
