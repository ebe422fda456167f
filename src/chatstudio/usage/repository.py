"""Every SQL statement about the usage ledger and idempotency keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, case, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.usage.models import IdempotencyKey, UsageDaily, UsageEvent
from chatstudio.users.models import User

GroupBy = Literal["day", "model", "user"]


@dataclass(frozen=True, slots=True)
class Totals:
    key: Any
    requests: int
    failures: int
    input_tokens: int
    output_tokens: int
    cost_nanousd: int
    latency_ms_sum: int
    ttft_ms_sum: int
    ttft_count: int


def _int(value: Any) -> int:
    # SUM comes back as Decimal on PostgreSQL and MySQL, int on SQLite, None over no rows.
    return int(value or 0)


USAGE_EVENT_TABLE = cast(Table, UsageEvent.__table__)
_EVENT_COLUMNS = [column.name for column in USAGE_EVENT_TABLE.columns]


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """A whole buffer in one statement, on the table itself: the ORM's bulk path costs several times
        more per row, and thousands of rows come every few seconds. On PostgreSQL a binary COPY (one
        statement for the batch; executemany runs one INSERT per row on both sides of the wire),
        elsewhere a multi-row INSERT."""
        if not rows:
            return
        connection = await self.session.connection()
        if connection.dialect.name == "postgresql":
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            if hasattr(driver, "copy_records_to_table"):
                columns = _EVENT_COLUMNS
                records = [tuple(row[name] for name in columns) for row in rows]
                await driver.copy_records_to_table(USAGE_EVENT_TABLE.name, records=records, columns=columns)
                return
        await self.session.execute(insert(USAGE_EVENT_TABLE), list(rows))

    async def events_before(self, cutoff: datetime, limit: int) -> list[UsageEvent]:
        query = select(UsageEvent).where(UsageEvent.created_at < cutoff).order_by(UsageEvent.created_at).limit(limit)
        return list((await self.session.execute(query)).scalars())

    async def delete_events(self, ids: Sequence[uuid.UUID]) -> int:
        result = await self.session.execute(delete(UsageEvent).where(UsageEvent.id.in_(ids)))
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def daily_rows(self, days: Iterable[date], user_ids: Iterable[uuid.UUID]) -> list[UsageDaily]:
        query = select(UsageDaily).where(UsageDaily.day.in_(set(days)), UsageDaily.user_id.in_(set(user_ids)))
        return list((await self.session.execute(query)).scalars())

    async def add_daily(self, rows: Sequence[UsageDaily]) -> None:
        self.session.add_all(rows)
        await self.session.flush()

    async def totals(self, group: GroupBy, start: date, end: date, user_id: uuid.UUID | None) -> list[Totals]:
        """Sums per group over both the recent detail and the rolled-up days, for `user_id` or everyone
        (served by ix_usage_*_user_day and ix_usage_*_day)."""
        event_key = {"day": UsageEvent.day, "model": UsageEvent.model, "user": UsageEvent.user_id}[group]
        events = select(
            event_key,
            func.count(),
            func.sum(case((UsageEvent.status == "failed", 1), else_=0)),
            func.sum(UsageEvent.input_tokens),
            func.sum(UsageEvent.output_tokens),
            func.sum(UsageEvent.cost_nanousd),
            func.sum(UsageEvent.latency_ms),
            func.sum(UsageEvent.ttft_ms),
            func.count(UsageEvent.ttft_ms),
        ).where(UsageEvent.day >= start, UsageEvent.day <= end)
        daily_key = {"day": UsageDaily.day, "model": UsageDaily.model, "user": UsageDaily.user_id}[group]
        daily = select(
            daily_key,
            func.sum(UsageDaily.requests),
            func.sum(UsageDaily.failures),
            func.sum(UsageDaily.input_tokens),
            func.sum(UsageDaily.output_tokens),
            func.sum(UsageDaily.cost_nanousd),
            func.sum(UsageDaily.latency_ms_sum),
            func.sum(UsageDaily.ttft_ms_sum),
            func.sum(UsageDaily.ttft_count),
        ).where(UsageDaily.day >= start, UsageDaily.day <= end)
        if user_id is not None:
            events = events.where(UsageEvent.user_id == user_id)
            daily = daily.where(UsageDaily.user_id == user_id)
        rows: list[Totals] = []
        for query in (events.group_by(event_key), daily.group_by(daily_key)):
            for row in await self.session.execute(query):
                rows.append(Totals(row[0], *(_int(value) for value in row[1:])))
        return rows

    async def emails_of(self, user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        wanted = set(user_ids)
        if not wanted:
            return {}
        result = await self.session.execute(select(User.id, User.email).where(User.id.in_(wanted)))
        return {row[0]: row[1] for row in result}


class IdempotencyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: IdempotencyKey) -> IdempotencyKey:
        self.session.add(row)
        await self.session.flush()
        return row

    async def get(self, user_id: uuid.UUID, scope: str, key: str) -> IdempotencyKey | None:
        result = await self.session.execute(
            select(IdempotencyKey).where(
                IdempotencyKey.user_id == user_id, IdempotencyKey.scope == scope, IdempotencyKey.key == key
            )
        )
        return result.scalar_one_or_none()

    async def update_attempt(self, row_id: uuid.UUID, attempt: int, values: dict[str, Any]) -> bool:
        """Changes the row only if no other attempt took it over meanwhile."""
        result = await self.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == row_id, IdempotencyKey.attempt == attempt)
            .values(**values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete_attempt(self, row_id: uuid.UUID, attempt: int) -> bool:
        result = await self.session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.id == row_id, IdempotencyKey.attempt == attempt)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def purge_expired(self, now: datetime) -> int:
        result = await self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
        return int(result.rowcount)  # type: ignore[attr-defined]
