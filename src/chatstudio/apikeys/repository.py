"""Every SQL statement about API keys. Each one filters by owner itself, except the lookup by hash,
which is how a key finds its owner."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.apikeys.models import ApiKey
from chatstudio.users.models import User


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        await self.session.flush()
        return key

    async def count_active(self, user_id: uuid.UUID) -> int:
        result = await self.session.execute(
            select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
        return int(result.scalar_one())

    async def list_active(self, user_id: uuid.UUID) -> list[ApiKey]:
        """Newest first (served by ix_api_key_user_list); expired keys stay listed until revoked."""
        query = select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)).order_by(ApiKey.id.desc())
        return list((await self.session.execute(query)).scalars())

    async def get_active_owned(self, key_id: uuid.UUID, user_id: uuid.UUID) -> ApiKey | None:
        result = await self.session.execute(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
        return result.scalar_one_or_none()

    async def find_usable(self, key_hash: str, now: datetime) -> tuple[ApiKey, User] | None:
        """The live key with this hash and its active owner, in one round trip."""
        query = (
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(
                ApiKey.key_hash == key_hash,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
                User.is_active.is_(True),
            )
        )
        row = (await self.session.execute(query)).first()
        return None if row is None else (row[0], row[1])

    async def touch(self, key_id: uuid.UUID, now: datetime) -> None:
        await self.session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))

    async def revoke_all_for_user(self, user_id: uuid.UUID, now: datetime) -> list[str]:
        """Revoke every live key of a user; returns their hashes for the in-process caches."""
        hashes = list(
            (
                await self.session.execute(
                    select(ApiKey.key_hash).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                )
            ).scalars()
        )
        if hashes:
            await self.session.execute(
                update(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
            )
        return hashes
