from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.audit.models import AuditEvent

if TYPE_CHECKING:
    from chatstudio.audit.service import AuditFilter


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(self, query: AuditFilter, *, limit: int, before: uuid.UUID | None) -> list[AuditEvent]:
        """Newest first; ids are time-ordered, so the id is the keyset."""
        statement = select(AuditEvent)
        if query.actor_id is not None:
            statement = statement.where(AuditEvent.actor_id == query.actor_id)
        if query.action:
            statement = statement.where(AuditEvent.action == query.action)
        if query.outcome:
            statement = statement.where(AuditEvent.outcome == query.outcome)
        if query.target_id:
            statement = statement.where(AuditEvent.target_id == query.target_id)
        if query.since is not None:
            statement = statement.where(AuditEvent.created_at >= query.since)
        if query.until is not None:
            statement = statement.where(AuditEvent.created_at < query.until)
        if before is not None:
            statement = statement.where(AuditEvent.id < before)
        statement = statement.order_by(AuditEvent.id.desc()).limit(limit)
        return list((await self.session.execute(statement)).scalars())
