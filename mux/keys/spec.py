"""Keys as operators write them: the ``keys:`` entries of the config file and the body of
``POST /admin/keys``, turned into ``KeyRecord``s, and the start-up load of the config's keys into a store.

A config entry gives the key itself (``key: "${ACME_KEY}"``) or only its SHA-256 (``key_sha256: <hex>``,
for operators who keep raw keys out of YAML); an admin request may give either or neither (then the
gateway makes one and answers it once). Config keys are authoritative for their names: at each start they
replace whatever the store holds under those names, and config keys dropped from the file are deleted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct
from msgspec.structs import replace

from mux.keys.hashing import from_sha256, hash_key, hint_of, new_key
from mux.keys.model import KeyName, KeyRecord, NonNegativeUSD, Period, PerMinute, epoch

MIN_KEY_LENGTH = 16
RawKey = Annotated[str, Meta(min_length=MIN_KEY_LENGTH, max_length=512)]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$")]


class KeySpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """One key as written in the config (``keys: [...]``) or posted to ``/admin/keys``. ``expires_at`` is
    ISO 8601 with a timezone (``"2027-01-01T00:00:00Z"``) or epoch seconds. ``budget_period`` defaults to
    ``total`` (a budget that never resets)."""

    name: KeyName
    key: RawKey | None = None
    key_sha256: Sha256Hex | None = None
    team: str | None = None
    metadata: dict[str, str] = {}
    models: list[str] = []
    expires_at: Annotated[datetime, Meta(tz=True)] | float | None = None
    disabled: bool = False
    budget_usd: NonNegativeUSD | None = None
    budget_period: Period = "total"
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None

    def __repr__(self) -> str:
        key = "***" if self.key else None
        return f"KeySpec(name={self.name!r}, key={key}, team={self.team!r})"

    __str__ = __repr__


def check_specs(specs: Sequence[KeySpec], where: str = "keys") -> None:
    """Raise ``ValueError`` naming the entry (``keys[1].key``) when a config entry has neither or both of
    ``key`` and ``key_sha256``, or when two entries share a name or a key."""
    names: set[str] = set()
    digests: set[str] = set()
    for index, spec in enumerate(specs):
        at = f"{where}[{index}]"
        if (spec.key is None) == (spec.key_sha256 is None):
            raise ValueError(f"{at}: give exactly one of 'key' and 'key_sha256'")
        if spec.name in names:
            raise ValueError(f"{at}.name: key name '{spec.name}' is used twice")
        names.add(spec.name)
        digest = from_sha256(spec.key_sha256) if spec.key_sha256 else hash_key(spec.key or "")
        if digest in digests:
            raise ValueError(f"{at}: the same key is configured twice")
        digests.add(digest)


def record_from_spec(
    spec: KeySpec, *, secret: str | bytes | None, now: float, source: Literal["config", "api"] = "api"
) -> tuple[KeyRecord, str | None]:
    """Answer the record for ``spec`` and the raw key if one was made here (neither ``key`` nor
    ``key_sha256`` given), to be shown once to whoever asked for it."""
    made = None
    if spec.key_sha256 is not None:
        key_hash, hint = from_sha256(spec.key_sha256, secret), None
    else:
        raw = spec.key if spec.key is not None else (made := new_key())
        key_hash, hint = hash_key(raw, secret), hint_of(raw)
    record = KeyRecord(
        name=spec.name,
        key_hash=key_hash,
        created_at=now,
        team=spec.team,
        metadata=dict(spec.metadata),
        models=list(spec.models),
        expires_at=epoch(spec.expires_at),
        disabled=spec.disabled,
        budget_usd=spec.budget_usd,
        budget_period=spec.budget_period,
        rpm=spec.rpm,
        tpm=spec.tpm,
        hint=hint,
        source=source,
    )
    return record, made


async def load_config_keys(
    store, specs: Sequence[KeySpec], *, secret: str | bytes | None, now: float | None = None
) -> dict[str, list[str]]:
    """Make the store hold exactly the config's keys under their names: put each (keeping ``created_at``
    when the key itself is unchanged) and delete config-sourced keys no longer in the config. Keys made
    through the admin API under other names are left alone. Answer the names ``put`` and ``deleted``.

    ``store`` is an open ``mux.stores.keys.KeyStore``; raise ``ValueError`` as ``check_specs`` does."""
    check_specs(specs)
    now = time.time() if now is None else now
    wanted = {spec.name for spec in specs}
    deleted = []
    for record in await store.list():
        if record.source == "config" and record.name not in wanted:
            await store.delete(record.name)
            deleted.append(record.name)
    put = []
    for spec in specs:
        record, _ = record_from_spec(spec, secret=secret, now=now, source="config")
        old = await store.get(spec.name)
        if old is not None and old.key_hash == record.key_hash:
            record = replace(record, created_at=old.created_at)
            if record == old:
                continue
        await store.put(record)
        put.append(spec.name)
    return {"put": put, "deleted": deleted}
