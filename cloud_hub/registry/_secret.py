"""Secrets the hub hands out, and how it keeps only their hashes.

Every token and device credential is 32 random bytes (``secrets.token_urlsafe``), so it
cannot be guessed or found in a dictionary; a single sha256 is therefore enough at rest
(the slow, salted hashes passwords need buy nothing for secrets with 256 bits of
entropy). Comparisons are constant-time.

Tokens carry a public id so the hub finds the row without scanning hashes::

    elt_<12 hex id>_<43 url-safe chars>    enrollment token
    eop_<12 hex id>_<43 url-safe chars>    operator (REST) token

The id is hex, so the first two underscores split a token even though the secret part
may itself contain underscores.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_BYTES = 32
ID_BYTES = 6


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def new_id() -> str:
    """A short public id: 12 hex characters."""
    return secrets.token_hex(ID_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def compose_token(prefix: str, token_id: str, secret: str) -> str:
    return f"{prefix}_{token_id}_{secret}"


def split_token(token: str, prefix: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token with ``prefix``; None for anything else."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != prefix:
        return None
    token_id, secret = parts[1], parts[2]
    if len(token_id) != 2 * ID_BYTES or not _is_hex(token_id) or not secret:
        return None
    return token_id, secret


def token_id_of(text: str, prefix: str) -> str:
    """The id in ``text``, which is either a bare id or a whole token."""
    split = split_token(text, prefix)
    return split[0] if split else text.strip()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
