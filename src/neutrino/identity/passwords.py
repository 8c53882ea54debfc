"""Password hashing with the stdlib's scrypt, stored as ``scrypt$n$r$p$salt$hash`` (base64 parts).

The parameters travel with each hash, so raising them later keeps old hashes verifiable.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1
DKLEN = 32
MAXMEM = 256 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=DKLEN)
    b64 = base64.b64encode
    return f"scrypt${N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected), maxmem=MAXMEM)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def _dummy() -> str:
    return hash_password(secrets.token_hex(8))


def burn_time(password: str) -> None:
    """Verify against a throwaway hash: an unknown user name costs as long as a wrong password."""
    verify_password(password, _dummy())
