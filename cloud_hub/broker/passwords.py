"""Mosquitto's password hashes: PBKDF2-HMAC-SHA512, written as ``$7$`` lines.

A line of Mosquitto's ``password_file`` is ``username:$7$<iterations>$<salt>$<hash>``, with
the salt (12 random bytes) and the 64-byte PBKDF2-HMAC-SHA512 digest in standard base64,
padded; the digest is computed over the decoded salt bytes. That is what ``mosquitto_passwd``
2.0 writes and what the broker checks (tests/test_broker_auth.py checks both ways against
the real binaries).

101 iterations is ``mosquitto_passwd``'s own default. More would buy nothing here: every
password the hub writes is a 256-bit random secret, which no dictionary holds, while the
broker pays the iterations on every CONNECT and again for every connected client each
time it reloads the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

ITERATIONS = 101
SALT_BYTES = 12
DIGEST_BYTES = 64
_MAX_ITERATIONS = 1_000_000


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<salt>$<hash>`` for ``password``, with a fresh salt unless given."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1-{_MAX_ITERATIONS}, not {iterations}")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = _digest(password, salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def password_matches(password: str, encoded: str) -> bool:
    """Whether ``encoded`` (a ``$7$`` hash) is a hash of ``password``; False if malformed."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7" or not parts[2].isdigit():
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= _MAX_ITERATIONS:
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except binascii.Error:
        return False
    return hmac.compare_digest(_digest(password, salt, iterations), expected)


def _digest(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, DIGEST_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
