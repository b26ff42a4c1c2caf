"""Pure key decisions: who passes (expiry, disabled, rotation with and without grace), which models a key
may use (provider/model, bare names, @routes), which header carries the key; the config and patch forms."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from mux.errors import Unauthorized
from mux.keys.decide import (
    DISABLED,
    INVALID,
    MISSING,
    ROTATED,
    Forbidden,
    allows_model,
    check,
    key_from_headers,
    model_denial,
)
from mux.keys.hashing import hash_key
from mux.keys.model import KeyPatch, KeyRecord, patched, public_view, rotated
from mux.keys.spec import KeySpec, check_specs

OLD, NEW, NEWER = hash_key("mux-old-key-0000000000"), hash_key("mux-new-key-1111111111"), hash_key("mux-x-2222222222")
NOW = 1_800_000_000.0


def key(**fields) -> KeyRecord:
    return KeyRecord(name="acme", key_hash=OLD, created_at=NOW - 100, **fields)


def test_unknown_key_is_refused_401_invalid_api_key():
    denial = check(None, NOW, OLD)
    assert denial is INVALID
    error = denial.error()
    assert isinstance(error, Unauthorized) and error.status == 401
    assert msgspec.json.decode(error.body()) == {
        "error": {
            "message": "Invalid API key.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_missing_key_is_refused_401_naming_both_headers():
    error = MISSING.error()
    assert error.status == 401 and error.code == "invalid_api_key"
    assert "Authorization: Bearer" in error.message and "x-api-key" in error.message


def test_a_valid_key_passes():
    assert check(key(), NOW, OLD) is None


def test_a_hash_that_is_not_the_records_is_refused():
    assert check(key(), NOW, NEW) is INVALID


def test_expired_key_is_refused_401_saying_when_and_passes_until_then():
    record = key(expires_at=datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert check(record, record.expires_at - 0.001, OLD) is None
    denial = check(record, record.expires_at, OLD)
    assert denial.status == 401 and denial.code == "invalid_api_key"
    assert denial.message == "This API key expired at 2027-01-01T00:00:00Z."


def test_disabled_key_is_refused_403_key_disabled():
    denial = check(key(disabled=True), NOW, OLD)
    assert denial is DISABLED
    error = denial.error()
    assert isinstance(error, Forbidden) and error.status == 403
    assert msgspec.json.decode(error.body())["error"] == {
        "message": "This API key is disabled.",
        "type": "permission_error",
        "param": None,
        "code": "key_disabled",
    }


def test_expiry_is_reported_before_disabled():
    assert check(key(disabled=True, expires_at=NOW - 1), NOW, OLD).status == 401


def test_rotation_without_grace_refuses_the_old_key_at_once_and_accepts_the_new():
    record = rotated(key(), NEW, now=NOW)
    assert record.key_hash == NEW and record.previous_hash == OLD
    assert check(record, NOW, OLD) is ROTATED
    assert ROTATED.error().status == 401 and ROTATED.code == "invalid_api_key"
    assert check(record, NOW, NEW) is None


def test_rotation_with_grace_accepts_the_old_key_until_the_grace_ends():
    record = rotated(key(), NEW, now=NOW, grace_s=60)
    assert check(record, NOW + 59.9, OLD) is None
    assert check(record, NOW + 60, OLD) is ROTATED
    assert check(record, NOW + 60, NEW) is None


def test_a_key_two_rotations_old_is_unknown():
    record = rotated(rotated(key(), NEW, now=NOW, grace_s=60), NEWER, now=NOW + 1, grace_s=60)
    assert record.hashes() == (NEWER, NEW)
    assert check(record, NOW + 2, OLD) is INVALID
    assert check(record, NOW + 2, NEW) is None


def test_an_old_key_in_grace_is_still_refused_when_the_key_is_disabled_or_expired():
    record = rotated(key(disabled=True), NEW, now=NOW, grace_s=60)
    assert check(record, NOW, OLD) is DISABLED
    assert check(rotated(key(expires_at=NOW), NEW, now=NOW, grace_s=60), NOW, OLD).status == 401


def test_negative_grace_is_refused():
    with pytest.raises(ValueError):
        rotated(key(), NEW, now=NOW, grace_s=-1)


def test_a_key_without_a_model_list_may_use_every_model():
    record = key()
    assert allows_model(record, "openai/gpt-4o") and allows_model(record, "@production")
    assert allows_model(record, "gpt-4o")


def test_model_list_allows_exact_provider_model_and_routes_only():
    record = key(models=["openai/gpt-4o-mini", "@production"])
    assert allows_model(record, "openai/gpt-4o-mini")
    assert allows_model(record, "@production")
    assert not allows_model(record, "openai/gpt-4o")
    assert not allows_model(record, "azure/gpt-4o-mini")
    assert not allows_model(record, "@staging")
    assert not allows_model(record, "production")
    assert not allows_model(record, "gpt-4o-mini")


def test_a_listed_bare_name_allows_that_model_from_any_provider_but_no_route():
    record = key(models=["gpt-4o"])
    assert allows_model(record, "gpt-4o")
    assert allows_model(record, "openai/gpt-4o") and allows_model(record, "azure/gpt-4o")
    assert not allows_model(record, "openai/gpt-4o-mini")
    assert not allows_model(record, "@gpt-4o")


def test_a_bare_request_passes_when_everything_it_resolves_to_is_allowed():
    record = key(models=["openai/gpt-4o-mini", "azure/gpt-4o-mini"])
    assert allows_model(record, "gpt-4o-mini", ["openai/gpt-4o-mini"])
    assert allows_model(record, "gpt-4o-mini", ["openai/gpt-4o-mini", "azure/gpt-4o-mini"])
    assert not allows_model(record, "gpt-4o-mini", ["openai/gpt-4o-mini", "groq/gpt-4o-mini"])
    assert not allows_model(record, "gpt-4o-mini", [])
    assert not allows_model(record, "gpt-4o-mini")


def test_a_model_denial_is_403_naming_the_model_and_parameter():
    error = model_denial("openai/gpt-4o").error()
    assert error.status == 403 and error.code == "model_not_allowed" and error.param == "model"
    assert "'openai/gpt-4o'" in error.message
    assert model_denial("@x", "fallbacks[1]").param == "fallbacks[1]"


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([(b"authorization", b"Bearer mux-abc")], "mux-abc"),
        ([(b"authorization", b"bearer   mux-abc  ")], "mux-abc"),
        ([(b"x-api-key", b"mux-abc")], "mux-abc"),
        ([(b"x-api-key", b"mux-anthropic"), (b"authorization", b"Bearer mux-openai")], "mux-openai"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz"), (b"x-api-key", b"mux-abc")], "mux-abc"),
        ([(b"authorization", b"Bearer "), (b"x-api-key", b" ")], None),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], None),
        ([(b"content-type", b"application/json")], None),
        ([], None),
    ],
)
def test_the_key_comes_from_bearer_authorization_or_x_api_key(headers, expected):
    assert key_from_headers(headers) == expected


ISSUE_EXAMPLE = {
    "name": "acme",
    "key": "mux-acme-0123456789abcdef",
    "team": "search",
    "budget_usd": 50,
    "budget_period": "month",
    "rpm": 600,
    "tpm": 200000,
    "models": ["openai/gpt-4o-mini", "@production"],
    "expires_at": "2027-01-01T00:00:00Z",
}


def test_the_config_form_of_the_issue_parses():
    spec = msgspec.convert(ISSUE_EXAMPLE, KeySpec)
    assert spec.expires_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert spec.budget_usd == 50 and spec.budget_period == "month" and spec.rpm == 600
    check_specs([spec])


@pytest.mark.parametrize(
    "change, where",
    [
        ({"colour": "red"}, "colour"),
        ({"key": "short"}, "key"),
        ({"expires_at": "2027-01-01T00:00:00"}, "expires_at"),
        ({"budget_period": "year"}, "budget_period"),
        ({"budget_usd": -1}, "budget_usd"),
        ({"rpm": 0}, "rpm"),
        ({"name": "a b"}, "name"),
        ({"key_sha256": "abc"}, "key_sha256"),
    ],
)
def test_a_bad_config_entry_is_refused_naming_the_field(change, where):
    with pytest.raises(msgspec.ValidationError, match=rf"`{where}`|\$\.{where}`"):
        msgspec.convert({**ISSUE_EXAMPLE, **change}, KeySpec)


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"name": "a"}], r"keys\[0\]: give exactly one of 'key' and 'key_sha256'"),
        ([{"name": "a", "key": "mux-0123456789abcdef", "key_sha256": "0" * 64}], r"keys\[0\]: give exactly one"),
        (
            [{"name": "a", "key": "mux-0123456789abcdef"}, {"name": "a", "key": "mux-0123456789abcdeX"}],
            r"keys\[1\].name: key name 'a' is used twice",
        ),
        (
            [
                {"name": "a", "key": "mux-0123456789abcdef"},
                {"name": "b", "key_sha256": hash_key("mux-0123456789abcdef")},
            ],
            r"keys\[1\]: the same key is configured twice",
        ),
    ],
)
def test_config_entries_need_one_key_form_and_unique_names_and_keys(entries, message):
    with pytest.raises(ValueError, match=message) as info:
        check_specs([msgspec.convert(e, KeySpec) for e in entries])
    assert "mux-0123456789abcde" not in str(info.value)


def test_a_patch_changes_only_the_fields_it_sets_and_null_clears():
    record = key(team="search", rpm=10, models=["@a"])
    patch = msgspec.json.decode(
        b'{"disabled": true, "team": null, "expires_at": "2027-01-01T00:00:00Z"}', type=KeyPatch
    )
    changed = patched(record, patch)
    assert changed.disabled and changed.team is None
    assert changed.expires_at == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert changed.rpm == 10 and changed.models == ["@a"] and changed.key_hash == OLD
    assert patched(record, KeyPatch(expires_at=5.0)).expires_at == 5.0


def test_a_patch_cannot_touch_the_key_or_name():
    for field in ("key_hash", "name", "previous_hash", "source"):
        with pytest.raises(msgspec.ValidationError, match="unknown field"):
            msgspec.json.decode(msgspec.json.encode({field: "x"}), type=KeyPatch)


def test_the_public_view_has_no_hashes_and_says_when_a_grace_ends():
    view = public_view(rotated(key(), NEW, now=NOW, grace_s=30))
    assert "key_hash" not in view and "previous_hash" not in view
    assert view["rotation_grace_until"] == NOW + 30 and view["name"] == "acme"
