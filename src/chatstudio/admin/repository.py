from __future__ import annotations

import uuid

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.db import like_contains
from chatstudio.users.models import Role, User


class AdminUserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(self, *, limit: int, before: uuid.UUID | None, q: str | None) -> list[User]:
        """Newest accounts first (uuid7 ids sort by creation); `q` matches email or name."""
        statement = select(User)
        if q:
            pattern = like_contains(q.lower())
            statement = statement.where(
                or_(User.email.like(pattern, escape="\\"), func.lower(User.name).like(pattern, escape="\\"))
            )
        if before is not None:
            statement = statement.where(User.id < before)
        statement = statement.order_by(User.id.desc()).limit(limit)
        return list((await self.session.execute(statement)).scalars())

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def count_active_admins(self) -> int:
        result = await self.session.execute(
            select(func.count()).select_from(User).where(User.role == Role.ADMIN, User.is_active.is_(True))
        )
        return int(result.scalar() or 0)
