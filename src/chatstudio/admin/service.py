"""Admin rules: who may be changed how. Flushes, never commits."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.admin.repository import AdminUserRepository
from chatstudio.admin.schemas import AdminUserUpdate
from chatstudio.apikeys.repository import ApiKeyRepository
from chatstudio.db import utcnow
from chatstudio.errors import Conflict, NotFound
from chatstudio.pagination import decode_cursor, encode_cursor
from chatstudio.users.models import Role, User
from chatstudio.users.repository import SessionRepository


class UserNotFound(NotFound):
    code = "user_not_found"
    default_message = "The user was not found."


class LastAdmin(Conflict):
    code = "last_admin"
    default_message = "This would leave the server without an active admin."


class CannotChangeSelf(Conflict):
    code = "cannot_change_self"
    default_message = "Admins cannot disable or demote themselves; ask another admin."


class AdminService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.users = AdminUserRepository(session)
        self.sessions = SessionRepository(session)

    async def list_users(self, *, limit: int, cursor: str | None, q: str | None) -> tuple[list[User], str | None]:
        before = decode_cursor(cursor, uuid.UUID)[0] if cursor else None
        rows = await self.users.list(limit=limit + 1, before=before, q=q)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].id)
        return rows, next_cursor

    async def update_user(
        self, actor: User, user_id: uuid.UUID, data: AdminUserUpdate
    ) -> tuple[User, dict[str, Any], list[str]]:
        """Returns the user, what changed (for the audit trail) and the hashes of API keys revoked.
        Disabling revokes every session and every API key."""
        user = await self.users.get(user_id)
        if user is None:
            raise UserNotFound()
        changes: dict[str, Any] = {}
        for name in data.model_fields_set:
            value = getattr(data, name)
            if name in ("is_active", "role") and value is None:
                continue
            if getattr(user, name) != value:
                changes[name] = value
        losing_admin = (
            user.is_admin and user.is_active and (changes.get("is_active") is False or changes.get("role") == Role.USER)
        )
        if losing_admin and user.id == actor.id:
            raise CannotChangeSelf()
        if losing_admin and await self.users.count_active_admins() <= 1:
            raise LastAdmin()
        for name, value in changes.items():
            setattr(user, name, value)
        revoked_keys: list[str] = []
        if changes.get("is_active") is False:
            now = utcnow()
            await self.sessions.revoke_all_for_user(user.id, now)
            revoked_keys = await ApiKeyRepository(self.session).revoke_all_for_user(user.id, now)
        await self.session.flush()
        return user, changes, revoked_keys
