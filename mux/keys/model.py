"""The stored form of a virtual key: ``KeyRecord``, and the pure edits made to it (rotation, patches).

A record holds the key's hash, never the key (see ``mux.keys.hashing``); its ``repr`` hides even the hashes,
so a record can be logged. Records are frozen: change one with ``rotated``, ``patched`` or
``msgspec.structs.replace`` and ``put`` the result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

Period = Literal["day", "week", "month", "total"]
KeyName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
KeyHash = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
NonNegativeUSD = Annotated[float, Meta(ge=0)]
PerMinute = Annotated[int, Meta(ge=1)]


class KeyRecord(Struct, kw_only=True, frozen=True):
    """One virtual key. ``models`` lists the allowed ``provider/model``, bare model and ``@route`` identifiers
    (empty: every model). Times are epoch seconds (UTC). After a rotation ``previous_hash`` is the old key's
    hash, accepted until ``previous_expires_at`` (the grace period; equal to the rotation time without grace),
    so the old key is then refused as rotated rather than unknown. ``source`` is ``config`` for keys from the
    config file (authoritative for their names: rewritten at each start, removed when dropped from the file)
    and ``api`` for keys made through the admin API. ``hint`` is a display form such as ``mux-…Ab3x``."""

    name: KeyName
    key_hash: KeyHash
    created_at: float
    team: str | None = None
    metadata: dict[str, str] = {}
    models: list[str] = []
    expires_at: float | None = None
    disabled: bool = False
    budget_usd: NonNegativeUSD | None = None
    budget_period: Period = "total"
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    previous_hash: KeyHash | None = None
    previous_expires_at: float | None = None
    hint: str | None = None
    source: Literal["config", "api"] = "api"

    def __repr__(self) -> str:
        hidden = {"key_hash", "previous_hash"}
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__struct_fields__ if f not in hidden)
        return f"KeyRecord({fields})"

    __str__ = __repr__

    def hashes(self) -> tuple[str, ...]:
        """Answer the hashes this record can be found by: the current one, and the previous one if any."""
        return (self.key_hash,) if self.previous_hash is None else (self.key_hash, self.previous_hash)


def public_view(record: KeyRecord) -> dict[str, Any]:
    """Answer the record as a JSON-ready dict without its hashes (for admin answers and logs); times stay
    epoch seconds, and ``rotation_grace_until`` is when a previous key stops working (null without one)."""
    data = msgspec.structs.asdict(record)
    del data["key_hash"], data["previous_hash"]
    data["rotation_grace_until"] = data.pop("previous_expires_at")
    return data


def rotated(
    record: KeyRecord, new_hash: str, *, now: float, grace_s: float = 0.0, hint: str | None = None
) -> KeyRecord:
    """Answer ``record`` with ``new_hash`` as its key; the old key keeps working for ``grace_s`` seconds
    after ``now`` (0: refused at once, as rotated). A key still in an earlier grace period is dropped."""
    if grace_s < 0:
        raise ValueError("grace_s must not be negative")
    return msgspec.structs.replace(
        record, key_hash=new_hash, previous_hash=record.key_hash, previous_expires_at=now + grace_s, hint=hint
    )


class KeyPatch(Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields an admin may change on an existing key (``PATCH /admin/keys/{name}``); absent fields stay,
    ``null`` clears an optional one. ``expires_at`` is ISO 8601 with a timezone or epoch seconds."""

    team: str | None | UnsetType = UNSET
    metadata: dict[str, str] | UnsetType = UNSET
    models: list[str] | UnsetType = UNSET
    expires_at: Annotated[datetime, Meta(tz=True)] | float | None | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET
    budget_usd: NonNegativeUSD | None | UnsetType = UNSET
    budget_period: Period | UnsetType = UNSET
    rpm: PerMinute | None | UnsetType = UNSET
    tpm: PerMinute | None | UnsetType = UNSET


def epoch(value: datetime | float | None) -> float | None:
    """Answer an aware datetime or epoch seconds as epoch seconds."""
    return value.timestamp() if isinstance(value, datetime) else value


def patched(record: KeyRecord, patch: KeyPatch) -> KeyRecord:
    """Answer ``record`` with the fields set in ``patch`` changed."""
    changes = {f: getattr(patch, f) for f in patch.__struct_fields__ if getattr(patch, f) is not UNSET}
    if "expires_at" in changes:
        changes["expires_at"] = epoch(changes["expires_at"])
    return msgspec.structs.replace(record, **changes)
