"""Keys are stored only as hashes: SHA-256, or HMAC-SHA256 with a server secret; the ``key_sha256`` config
form reaches the same stored hash; no record, spec or view ever shows the raw key (nor a repr the hash)."""

from __future__ import annotations

import hashlib
import hmac
import re

import msgspec
import pytest

from mux.keys.hashing import from_sha256, hash_key, hint_of, new_key, same_hash, sha256_hex
from mux.keys.model import public_view
from mux.keys.spec import KeySpec, record_from_spec

RAW = "mux-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"


def test_new_keys_are_prefixed_url_safe_and_unique():
    keys = {new_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"mux-[A-Za-z0-9_-]{43}", key)


def test_without_a_secret_the_hash_is_the_sha256_of_the_key():
    assert hash_key(RAW) == hashlib.sha256(RAW.encode()).hexdigest() == sha256_hex(RAW)
    assert hash_key(RAW, "") == hash_key(RAW, None)


def test_with_a_secret_the_hash_is_an_hmac_of_the_sha256_digest():
    expected = hmac.new(b"s3cret", hashlib.sha256(RAW.encode()).digest(), hashlib.sha256).hexdigest()
    assert hash_key(RAW, "s3cret") == expected == hash_key(RAW, b"s3cret")
    assert hash_key(RAW, "s3cret") != hash_key(RAW, "other") != hash_key(RAW)
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_key_sha256_form_gives_the_same_stored_hash_as_the_raw_key(secret):
    digest = sha256_hex(RAW)
    assert from_sha256(digest, secret) == hash_key(RAW, secret)
    assert from_sha256(digest.upper(), secret) == hash_key(RAW, secret)


@pytest.mark.parametrize("bad", ["", "abc", "z" * 64, "0" * 63, "0" * 65])
def test_key_sha256_must_be_64_hex_digits(bad):
    with pytest.raises(ValueError):
        from_sha256(bad)


def test_hashes_compare_equal_only_when_equal():
    h = hash_key(RAW)
    assert same_hash(h, hash_key(RAW))
    assert not same_hash(h, hash_key(RAW + "x"))
    assert not same_hash(h, None) and not same_hash(None, None)


def test_hint_shows_only_the_prefix_and_last_four_characters():
    assert hint_of(RAW) == "mux-…DEFG"
    assert hint_of("short") == "…"


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_raw_key_is_in_no_record_view_or_repr_and_hashes_are_in_no_repr(secret):
    spec = msgspec.convert({"name": "acme", "key": RAW, "team": "search"}, KeySpec)
    record, made = record_from_spec(spec, secret=secret, now=1.0)
    assert made is None
    assert record.key_hash == hash_key(RAW, secret)
    for text in (
        repr(record),
        str(record),
        msgspec.json.encode(record).decode(),
        msgspec.json.encode(public_view(record)).decode(),
        repr(spec),
        str(spec),
    ):
        assert RAW not in text
        assert RAW[4:-4] not in text
    for text in (repr(record), str(record), msgspec.json.encode(public_view(record)).decode()):
        assert record.key_hash not in text
    assert "acme" in repr(record) and "search" in repr(record)


def test_a_generated_key_is_answered_once_and_only_its_hash_is_kept():
    record, made = record_from_spec(KeySpec(name="new"), secret="s", now=1.0)
    assert made is not None and made.startswith("mux-")
    assert record.key_hash == hash_key(made, "s")
    assert made not in msgspec.json.encode(record).decode()
    assert record.hint == hint_of(made)
