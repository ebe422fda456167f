"""Recording and reading audit events.

Events are written in their own short transaction, so a refused request (a failed sign-in) is
recorded even though its own unit of work rolls back. That write runs as a task beside the request
rather than inside it: on SQLite, a second writer waiting inside a request that holds the write
lock would wait for itself. Each event also goes to the log at once; `flush()` awaits the writes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatstudio.audit.models import AuditEvent
from chatstudio.audit.repository import AuditRepository
from chatstudio.db import session_scope
from chatstudio.pagination import decode_cursor, encode_cursor

logger = logging.getLogger("chatstudio.audit")

SUCCESS = "success"
FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class RequestContext:
    ip: str | None
    user_agent: str | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor_id: uuid.UUID | None = None
    action: str | None = None
    outcome: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass
class AuditLog:
    sessionmaker: async_sessionmaker[AsyncSession]
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    async def record(
        self,
        context: RequestContext,
        action: str,
        *,
        outcome: str = SUCCESS,
        actor_id: uuid.UUID | None = None,
        target_type: str | None = None,
        target_id: Any = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        event = AuditEvent(
            actor_id=actor_id,
            action=action,
            outcome=outcome,
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            ip=context.ip,
            user_agent=(context.user_agent or "")[:300] or None,
            request_id=context.request_id,
            details=details or {},
        )
        logger.info(
            "audit %s %s",
            action,
            outcome,
            extra={
                "audit_action": action,
                "audit_outcome": outcome,
                "actor_id": str(actor_id) if actor_id else None,
                "target": f"{target_type}:{event.target_id}" if target_type else None,
                "client_ip": context.ip,
                "request_id": context.request_id,
            },
        )
        task = asyncio.create_task(self._store(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(self, event: AuditEvent) -> None:
        try:
            async with session_scope(self.sessionmaker) as session:
                session.add(event)
        except Exception:
            # Losing an audit row must not turn anything into a 500; the log line stays.
            logger.exception("could not store audit event %s", event.action)

    async def flush(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def page(self, query: AuditFilter, *, limit: int, cursor: str | None) -> tuple[list[AuditEvent], str | None]:
        await self.flush()  # this instance's own recent events are visible to the admin reading them
        async with self.sessionmaker() as session:
            rows = await AuditRepository(session).list(query, limit=limit + 1, before=_cursor_id(cursor))
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].id)
        return rows, next_cursor


def _cursor_id(cursor: str | None) -> uuid.UUID | None:
    return decode_cursor(cursor, uuid.UUID)[0] if cursor else None
