"""API-key authentication for the hot path: a short in-process cache in front of one indexed query.

A cache hit costs one SHA-256 and a dict lookup, no database. An entry lives CACHE_TTL seconds, never past
the key's expiry; concurrent misses for one key share a single query. Unknown keys are cached too, so a
client repeating a bad key costs no queries either (a hash never becomes valid later: keys are random).

Revocation: the instance that revokes a key drops it at once and refuses to cache it again for a TTL (a
local revoked-set, which also covers a load that raced the revocation). Other instances stop accepting it
when their entry ages out, within CACHE_TTL seconds: the short TTL is the cross-instance guarantee.
`last_used_at` is written on a cache miss at most once a minute, never per request.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatstudio.apikeys.repository import ApiKeyRepository
from chatstudio.apikeys.service import InvalidApiKey, hash_key, is_api_key
from chatstudio.db import session_scope, utcnow
from chatstudio.users.models import User

CACHE_TTL = 30.0
TOUCH_EVERY = timedelta(minutes=1)
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    id: uuid.UUID
    user_id: uuid.UUID
    prefix: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class AuthenticatedKey:
    key: KeyIdentity
    # Detached from any session and shared by concurrent requests: read it, never change it.
    user: User


@dataclass(slots=True)
class _Entry:
    value: AuthenticatedKey | None
    until: float


class ApiKeyAuthenticator:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        ttl: float = CACHE_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._revoked: dict[str, float] = {}
        self._loading: dict[str, asyncio.Task[AuthenticatedKey | None]] = {}

    def cached(self, raw: str) -> AuthenticatedKey | None:
        """A key this instance recently accepted, without any I/O; None when it would take a query."""
        if not is_api_key(raw):
            return None
        entry = self._entries.get(hash_key(raw))
        if entry is None or entry.value is None or entry.until <= self._clock():
            return None
        return entry.value

    def cached_user_id(self, raw: str) -> uuid.UUID | None:
        """The owner of a key this instance recently accepted, without any I/O (for rate limiting)."""
        found = self.cached(raw)
        return found.key.user_id if found is not None else None

    async def authenticate(self, raw: str) -> AuthenticatedKey:
        key_hash = hash_key(raw)
        entry = self._entries.get(key_hash)
        value = entry.value if entry is not None and entry.until > self._clock() else await self._load_once(key_hash)
        if value is None:
            raise InvalidApiKey()
        return value

    def revoke(self, key_hash: str) -> None:
        now = self._clock()
        self._entries.pop(key_hash, None)
        self._revoked = {h: until for h, until in self._revoked.items() if until > now}
        self._revoked[key_hash] = now + self._ttl

    async def _load_once(self, key_hash: str) -> AuthenticatedKey | None:
        """Concurrent misses share one query, run in its own task so no requester's cancellation ends it."""
        task = self._loading.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._load_and_store(key_hash), name="api-key-lookup")
            self._loading[key_hash] = task
            task.add_done_callback(functools.partial(self._loaded, key_hash))
        return await asyncio.shield(task)

    def _loaded(self, key_hash: str, task: asyncio.Task[AuthenticatedKey | None]) -> None:
        self._loading.pop(key_hash, None)
        if not task.cancelled():
            task.exception()  # retrieved, so a failure nobody waited for is not reported twice

    async def _load_and_store(self, key_hash: str) -> AuthenticatedKey | None:
        value, lifetime = await self._load(key_hash)
        now = self._clock()
        if self._revoked.get(key_hash, 0.0) > now:
            value = None  # revoked while the query ran
        self._store(key_hash, _Entry(value, now + lifetime))
        return value

    async def _load(self, key_hash: str) -> tuple[AuthenticatedKey | None, float]:
        now = utcnow()
        async with session_scope(self._sessionmaker) as session:
            keys = ApiKeyRepository(session)
            found = await keys.find_usable(key_hash, now)
            if found is None:
                return None, self._ttl
            key, user = found
            if key.last_used_at is None or now - key.last_used_at >= TOUCH_EVERY:
                await keys.touch(key.id, now)
        lifetime = self._ttl
        if key.expires_at is not None:
            lifetime = min(lifetime, (key.expires_at - now).total_seconds())
        identity = KeyIdentity(key.id, key.user_id, key.prefix, frozenset(key.scope_list))
        return AuthenticatedKey(identity, user), lifetime

    def _store(self, key_hash: str, entry: _Entry) -> None:
        if len(self._entries) >= self._max_entries:
            now = self._clock()
            self._entries = {h: e for h, e in self._entries.items() if e.until > now}
            while len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest insertion
        self._entries[key_hash] = entry
