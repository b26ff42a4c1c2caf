"""Keys are stored only as hashes; this module makes keys and hashes them.

The stored hash of a raw key is ``sha256(key)`` as hex when no server secret is configured, and
``HMAC-SHA256(secret, sha256(key))`` as hex when one is. Hashing the SHA-256 digest rather than the key is
what lets an operator write ``key_sha256: <hex>`` in the config instead of the raw key and still use a
secret (``from_sha256``). The secret makes a stolen store useless for checking guessed keys offline; keys
are 256 random bits, so a fast hash suffices (no password hashing). Changing the secret invalidates every
stored hash except the config file's keys, which are re-hashed at each start.

Stores look records up by hash, so a hash is never compared byte by byte in Python on the request path;
where two hashes are compared (``same_hash``) it is in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "mux-"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def new_key() -> str:
    """Answer a fresh key: ``mux-`` and 43 URL-safe characters (256 random bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def sha256_hex(raw: str) -> str:
    """Answer the SHA-256 of ``raw`` (UTF-8) as lower-case hex: what ``key_sha256`` holds."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _secret_bytes(secret: str | bytes | None) -> bytes | None:
    if secret is None or secret == "" or secret == b"":
        return None
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def from_sha256(digest_hex: str, secret: str | bytes | None = None) -> str:
    """Answer the stored hash for a key known only by its SHA-256 hex digest; raise ``ValueError`` if
    ``digest_hex`` is not 64 hex digits."""
    if not _HEX64.match(digest_hex):
        raise ValueError("expected the SHA-256 of the key as 64 hex digits")
    key = _secret_bytes(secret)
    if key is None:
        return digest_hex.lower()
    return hmac.new(key, bytes.fromhex(digest_hex), hashlib.sha256).hexdigest()


def hash_key(raw: str, secret: str | bytes | None = None) -> str:
    """Answer the stored hash of the raw key ``raw``: 64 lower-case hex digits."""
    digest = hashlib.sha256(raw.encode("utf-8")).digest()
    key = _secret_bytes(secret)
    if key is None:
        return digest.hex()
    return hmac.new(key, digest, hashlib.sha256).hexdigest()


def same_hash(a: str | None, b: str | None) -> bool:
    """Whether two hashes are equal, compared in constant time; ``None`` equals nothing."""
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def hint_of(raw: str) -> str:
    """Answer a display form of a key that cannot be used to guess it: its prefix and last four characters."""
    head = PREFIX if raw.startswith(PREFIX) else ""
    return f"{head}…{raw[-4:]}" if len(raw) >= 16 else "…"
