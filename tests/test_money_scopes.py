"""Scopes: which requests a budget or a rate limit counts, and the counter each one lands in."""

from __future__ import annotations

from mux.money.scopes import Scope, key_scope


def of(scope: Scope, key=None, team=None, end_user=None, tags=None):
    return scope.of(key, team, end_user, tags or {})


def test_an_empty_scope_counts_every_request_in_one_counter():
    everything = Scope()
    assert everything.is_global
    assert of(everything) == of(everything, "acme", "search", "u1", {"a": "b"}) == "global"


def test_a_wildcard_end_user_counts_each_end_user_on_their_own_and_skips_requests_without_one():
    each = Scope(end_user="*")
    assert of(each, end_user="u1") == "end_user:u1"
    assert of(each, end_user="u2") == "end_user:u2"
    assert of(each) is None


def test_a_named_end_user_counts_only_that_user():
    vip = Scope(end_user="user_42")
    assert of(vip, end_user="user_42") == "end_user:user_42"
    assert of(vip, end_user="user_43") is None


def test_tags_must_all_match_and_a_wildcard_value_counts_each_value():
    acme = Scope(tags={"tenant": "acme", "env": "prod"})
    assert of(acme, tags={"tenant": "acme", "env": "prod", "x": "y"}) == "tag:env=prod,tenant=acme"
    assert of(acme, tags={"tenant": "acme"}) is None
    tenants = Scope(tags={"tenant": "*"})
    assert of(tenants, tags={"tenant": "a"}) != of(tenants, tags={"tenant": "b"})


def test_team_and_key_scopes_need_a_key():
    assert of(Scope(team="search"), key="acme", team="search") == "team:search"
    assert of(Scope(team="search")) is None
    assert of(Scope(key="acme"), key="acme") == key_scope("acme") == "key:acme"
    assert of(Scope(key="*"), key="other") == "key:other"


def test_conditions_combine_and_values_are_encoded_so_no_value_forges_another_counter():
    both = Scope(team="search", end_user="*")
    assert of(both, key="k", team="search", end_user="u1") == "team:search&end_user:u1"
    assert of(both, key="k", team="other", end_user="u1") is None
    forged = of(Scope(end_user="*"), end_user="u1&tag:tenant=acme")
    assert forged == "end_user:u1%26tag%3Atenant%3Dacme"


def test_the_narrowest_scope_ranks_first():
    ranks = [
        Scope(end_user="*").rank,
        Scope(key="*").rank,
        Scope(tags={"a": "*"}).rank,
        Scope(team="*").rank,
        Scope().rank,
    ]
    assert ranks == sorted(ranks) and len(set(ranks)) == 5
