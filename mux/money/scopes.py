"""Who a budget or a rate limit counts: a scope matched against a request's identity, answering its counter.

A ``Scope`` holds up to four conditions — a virtual key's name, its team, the end user, tags — each a value or
``"*"`` (any value: each value counted on its own). A request matches when every condition set does; the
answer is the **scope key** that names its counter in the stores: ``key:acme``, ``end_user:user_42``,
``tag:tenant=acme``, ``team:search``, several joined with ``&`` (``team:search&tag:tenant=acme``), or
``global`` for a scope with no condition (every request, one counter). Values are percent-encoded in scope
keys, so no value can forge another's counter; ``conditions`` reads a scope key back into its values (what
a budget asks the request ledger for). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import quote, unquote

ANY = "*"


def _q(value: str) -> str:
    return quote(value, safe="")


def key_scope(name: str) -> str:
    """The scope key of a virtual key's own (shorthand) budget or limit: the one ``Scope(key=name)`` answers."""
    return "key:" + _q(name)


class Scope:
    """One budget's or limit's conditions, compiled once; ``of(...)`` answers the request's scope key or None."""

    __slots__ = ("key", "team", "end_user", "tags", "rank", "_fixed")

    def __init__(
        self,
        *,
        key: str | None = None,
        team: str | None = None,
        end_user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.key = key
        self.team = team
        self.end_user = end_user
        self.tags = dict(sorted(tags.items())) if tags else None
        # the narrowest condition first: an end user, a key, tags, a team, everything
        self.rank = 0 if end_user else 1 if key else 2 if tags else 3 if team else 4
        wild = ANY in (key, team, end_user) or (self.tags is not None and ANY in self.tags.values())
        self._fixed = None if wild else self._compose(key, team, end_user, self.tags)

    @property
    def is_global(self) -> bool:
        return self.rank == 4

    def of(self, key: str | None, team: str | None, end_user: str | None, tags: Mapping[str, str]) -> str | None:
        """Answer the scope key of a request by virtual key ``key`` (its name; ``team`` its team), end user
        ``end_user`` and ``tags``, or None when the request is outside this scope."""
        if self.key is not None and (key is None or self.key != ANY and self.key != key):
            return None
        if self.team is not None and (team is None or self.team != ANY and self.team != team):
            return None
        if self.end_user is not None and (end_user is None or self.end_user != ANY and self.end_user != end_user):
            return None
        if self.tags is not None:
            for name, value in self.tags.items():
                got = tags.get(name)
                if got is None or value != ANY and value != got:
                    return None
        if self._fixed is not None:
            return self._fixed
        return self._compose(key, team, end_user, {k: tags[k] for k in self.tags} if self.tags else None)

    def _compose(self, key: str | None, team: str | None, end_user: str | None, tags: Mapping[str, str] | None) -> str:
        parts = []
        if self.key is not None:
            parts.append("key:" + _q(key or ""))
        if self.team is not None:
            parts.append("team:" + _q(team or ""))
        if self.end_user is not None:
            parts.append("end_user:" + _q(end_user or ""))
        if tags:
            parts.append("tag:" + ",".join(f"{_q(k)}={_q(v)}" for k, v in tags.items()))
        return "&".join(parts) or "global"


class Conditions(NamedTuple):
    """The values one scope key names: the requests it counts are those matching every one that is set."""

    key: str | None = None
    team: str | None = None
    end_user: str | None = None
    tags: dict[str, str] = {}


def conditions(scope_key: str) -> Conditions:
    """Answer the values the scope key ``scope_key`` (as ``Scope.of`` or ``key_scope`` answer it) names; no value
    for ``global``. Raise ValueError for a string no scope answers."""
    if scope_key == "global":
        return Conditions(tags={})
    found: dict[str, str] = {}
    tags: dict[str, str] = {}
    for part in scope_key.split("&"):
        kind, sep, value = part.partition(":")
        if not sep or kind in found or kind == "tag" and tags:
            raise ValueError(f"not a scope key: {scope_key!r}")
        if kind == "tag":
            for pair in value.split(","):
                name, eq, tag_value = pair.partition("=")
                if not eq:
                    raise ValueError(f"not a scope key: {scope_key!r}")
                tags[unquote(name)] = unquote(tag_value)
        elif kind in ("key", "team", "end_user"):
            found[kind] = unquote(value)
        else:
            raise ValueError(f"not a scope key: {scope_key!r}")
    return Conditions(found.get("key"), found.get("team"), found.get("end_user"), tags)
