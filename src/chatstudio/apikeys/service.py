"""API key rules: creation, listing, revocation, and what a key may reach. Flushes, never commits."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.apikeys.models import ApiKey
from chatstudio.apikeys.repository import ApiKeyRepository
from chatstudio.apikeys.schemas import ApiKeyCreate
from chatstudio.db import utcnow
from chatstudio.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized

KEY_PREFIX = "cs-"
# "cs-" and 8 random characters: enough to tell keys apart in a list, far too little to guess the rest.
VISIBLE_PREFIX_LENGTH = 11
MAX_KEYS_PER_USER = 100
DEFAULT_SCOPES = ("chat",)

# Never reachable with a key, whatever its scopes: managing keys, the password, sign-in, administration.
_KEY_FORBIDDEN = ("/api/v1/api-keys", "/api/v1/admin", "/api/v1/users/me/password", "/api/v1/auth")
_CHAT_ROUTES = ("/api/v1/conversations", "/api/v1/models")
_READ_METHODS = frozenset({"GET", "HEAD"})


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    default_message = "The API key was not found."


class TooManyApiKeys(Conflict):
    code = "too_many_api_keys"
    default_message = f"An account can hold at most {MAX_KEYS_PER_USER} API keys; revoke one first."


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"
    default_message = "The API key is invalid, expired or revoked."


class InsufficientScope(Forbidden):
    code = "insufficient_scope"
    default_message = "This API key's scopes do not allow this request."


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_api_key(token: str) -> bool:
    """Our keys start with `cs-`; JWTs start with `eyJ`, so the two never collide."""
    return token.startswith(KEY_PREFIX)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def scope_allows(scopes: frozenset[str], method: str, path: str) -> bool:
    """`chat`: /v1/* and the chat routes (conversations, messages, the model list); `read`: any GET
    under /api/v1 that keys may reach at all."""
    if path.startswith(_KEY_FORBIDDEN):
        return False
    if path.startswith("/v1/"):
        return "chat" in scopes
    if not path.startswith("/api/v1/"):
        return False
    if "chat" in scopes and path.startswith(_CHAT_ROUTES):
        return True
    return "read" in scopes and method in _READ_METHODS


def check_scope(scopes: frozenset[str], method: str, path: str) -> None:
    if not scope_allows(scopes, method, path):
        raise InsufficientScope()


class ApiKeyService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.keys = ApiKeyRepository(session)

    async def create(self, user_id: uuid.UUID, data: ApiKeyCreate) -> tuple[ApiKey, str]:
        """The new key and its one visible copy of the secret."""
        if data.expires_at is not None and data.expires_at <= utcnow():
            raise InvalidInput("expires_at must be in the future.")
        if await self.keys.count_active(user_id) >= MAX_KEYS_PER_USER:
            raise TooManyApiKeys()
        raw = new_key()
        scopes = " ".join(sorted(set(data.scopes or DEFAULT_SCOPES)))
        key = ApiKey(
            user_id=user_id,
            name=data.name,
            prefix=raw[:VISIBLE_PREFIX_LENGTH],
            key_hash=hash_key(raw),
            scopes=scopes,
            expires_at=data.expires_at,
        )
        return await self.keys.add(key), raw

    async def list(self, user_id: uuid.UUID) -> list[ApiKey]:
        return await self.keys.list_active(user_id)

    async def revoke(self, user_id: uuid.UUID, key_id: uuid.UUID) -> str:
        """Marks the key revoked and returns its hash, for the in-process caches to forget it."""
        key = await self.keys.get_active_owned(key_id, user_id)
        if key is None:
            raise ApiKeyNotFound()
        key.revoked_at = utcnow()
        await self.session.flush()
        return key.key_hash
