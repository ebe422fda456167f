"""Password hashing and policy, JWT access tokens, opaque tokens. Pure functions, no I/O but the
one-time read of the shipped common-password list."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib.resources import files
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from chatstudio.errors import InvalidToken, WeakPassword

PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 128
ACCESS_TOKEN_TYPE = "access"

# argon2id with the library's RFC 9106 "low memory" profile; changing these makes old hashes
# report check_needs_rehash() and they are upgraded at the next successful login.
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password_async(password: str) -> str:
    """argon2 releases the GIL; hashing in a thread keeps ~50 ms of CPU off the event loop."""
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password_async(password_hash: str, password: str) -> bool:
    return await asyncio.to_thread(verify_password, password_hash, password)


def password_needs_rehash(password_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@lru_cache(maxsize=1)
def dummy_password_hash() -> str:
    """Verified against when the email is unknown, so both failures cost the same time."""
    return _hasher.hash(secrets.token_urlsafe(16))


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    data = files("chatstudio").joinpath("data/common-passwords.txt.gz").read_bytes()
    return frozenset(gzip.decompress(data).decode().split())


def check_password_policy(password: str, email: str | None = None) -> None:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise WeakPassword(f"The password must be at least {PASSWORD_MIN_LENGTH} characters long.")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise WeakPassword(f"The password must be at most {PASSWORD_MAX_LENGTH} characters long.")
    lowered = password.lower()
    if lowered in common_passwords():
        raise WeakPassword("The password is too common; choose a less predictable one.")
    if email:
        email = email.lower()
        if lowered == email or lowered == email.split("@", 1)[0]:
            raise WeakPassword("The password must not be your email address.")


def new_opaque_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def hash_opaque_token(token: str) -> str:
    """Refresh and reset tokens are high-entropy, so a fast hash is enough to keep the stored
    value useless to someone who reads the database."""
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    jti: str
    expires_at: datetime


def create_access_token(
    *,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    key: str,
    algorithm: str,
    lifetime: timedelta,
    now: datetime | None = None,
) -> tuple[str, AccessClaims]:
    issued = now or datetime.now(UTC)
    expires = issued + lifetime
    claims = AccessClaims(user_id, session_id, uuid.uuid4().hex, expires)
    payload = {
        "sub": str(user_id),
        "sid": str(session_id),
        "jti": claims.jti,
        "type": ACCESS_TOKEN_TYPE,
        "iat": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
    }
    return jwt.encode(payload, key, algorithm=algorithm), claims


# Verified tokens: one client sends the same token with every request for its whole lifetime, and
# the edge and the sign-in check each need its claims. Revocation is not decided here (the session
# check reads the database), only the signature and expiry, so a cached answer is as good as a new one.
_verified: dict[str, tuple[str, str, AccessClaims]] = {}
MAX_VERIFIED_TOKENS = 4096
TOKEN_LEEWAY_SECONDS = 5


def decode_access_token(token: str, *, key: str, algorithm: str) -> AccessClaims:
    """Only the configured algorithm is accepted, which rules out `none` and key confusion."""
    known = _verified.get(token)
    if known is not None and known[0] == key and known[1] == algorithm:
        claims = known[2]
        if claims.expires_at.timestamp() + TOKEN_LEEWAY_SECONDS > time.time():
            return claims
        _verified.pop(token, None)
        raise InvalidToken("The access token has expired.")
    claims = _decode_access_token(token, key=key, algorithm=algorithm)
    if len(_verified) >= MAX_VERIFIED_TOKENS:
        _verified.clear()
    _verified[token] = (key, algorithm, claims)
    return claims


def _decode_access_token(token: str, *, key: str, algorithm: str) -> AccessClaims:
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            options={"require": ["sub", "sid", "jti", "type", "iat", "exp"]},
            leeway=TOKEN_LEEWAY_SECONDS,
        )
        if payload["type"] != ACCESS_TOKEN_TYPE:
            raise InvalidToken("The token is not an access token.")
        return AccessClaims(
            user_id=uuid.UUID(str(payload["sub"])),
            session_id=uuid.UUID(str(payload["sid"])),
            jti=str(payload["jti"]),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("The access token has expired.") from None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise InvalidToken() from None
