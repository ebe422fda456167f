"""The usage ledger's buffered writer: `record()` appends to a list (no I/O, safe on the streaming path);
a background task writes the buffer in one multi-row INSERT every USAGE_FLUSH_INTERVAL seconds (sooner
when FLUSH_AT records are waiting) and once more at shutdown.

What a crash can lose: the records of the last USAGE_FLUSH_INTERVAL seconds (plus any kept after a failed
write). A graceful shutdown loses nothing. While the database is unreachable the buffer keeps up to
MAX_BUFFER records and counts, then logs, what it had to drop beyond that.

Maintenance runs in the same task about hourly: events older than USAGE_DETAIL_RETENTION_DAYS are folded
into `usage_daily` and deleted, and registered jobs (expired idempotency keys) run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatstudio.config import Settings
from chatstudio.db import session_scope, utcnow, uuid7
from chatstudio.llm.base import Usage
from chatstudio.usage.models import UsageDaily, UsageEvent
from chatstudio.usage.prices import PriceTable
from chatstudio.usage.repository import UsageRepository

logger = logging.getLogger(__name__)

# The API key that authenticated the current request (None for a signed-in user); chat turns inherit it.
request_api_key: ContextVar[uuid.UUID | None] = ContextVar("chatstudio_request_api_key", default=None)

FLUSH_AT = 500
MAX_BUFFER = 100_000
ROLLUP_BATCH = 1000
MAINTENANCE_EVERY = 3600.0
FIRST_MAINTENANCE_AFTER = 60.0

MaintenanceJob = Callable[[datetime], Awaitable[Any]]
GroupKey = tuple[date, uuid.UUID, uuid.UUID | None, str, str, str]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    source: str  # chat | api
    model: str  # provider/model
    input_tokens: int
    output_tokens: int
    status: str
    latency_ms: int
    ttft_ms: int | None
    at: datetime


class _RolledUpElsewhere(Exception):
    """Another instance deleted some of these events first: undo ours, it has them."""


class UsageLedger:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        prices: PriceTable | None = None,
        timezone: str = "UTC",
        flush_interval: float = 2.0,
        retention_days: int = 30,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.prices = prices or PriceTable()
        self.timezone = ZoneInfo(timezone)
        self._interval = flush_interval
        self._retention = timedelta(days=retention_days)
        self._max_buffer = max_buffer
        self._buffer: list[UsageRecord] = []
        self._writing: list[UsageRecord] = []  # the batch a flush is writing, until it commits
        self._dropped = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._jobs: list[MaintenanceJob] = []

    @classmethod
    def from_settings(cls, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> UsageLedger:
        return cls(
            sessionmaker,
            prices=PriceTable(settings.model_prices),
            timezone=settings.timezone,
            flush_interval=settings.usage_flush_interval,
            retention_days=settings.usage_detail_retention_days,
        )

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def day_of(self, at: datetime) -> date:
        return at.astimezone(self.timezone).date()

    # recording: no I/O, no await

    def record(self, record: UsageRecord) -> None:
        if len(self._buffer) >= self._max_buffer:
            self._dropped += 1
            return
        self._buffer.append(record)
        if len(self._buffer) >= FLUSH_AT:
            self._wake.set()

    def record_turn(
        self, user_id: uuid.UUID, model: str, usage: Usage, status: str, latency_ms: int, ttft_ms: int | None
    ) -> None:
        """A chat turn's call, charged to the API key of the request that started it, if any."""
        self.record(
            UsageRecord(
                user_id=user_id,
                api_key_id=request_api_key.get(),
                source="chat",
                model=model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                status=status,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                at=utcnow(),
            )
        )

    def pending_tokens(self, user_id: uuid.UUID, today: date, month_start: date) -> tuple[int, int]:
        """Tokens of `user_id` not yet in the database (buffered, or in a write not yet committed), for
        `today` and for `month_start`..`today` (days in TIMEZONE): what a budget check adds to the stored sums."""
        day_total = month_total = 0
        for record in (*self._writing, *self._buffer):
            if record.user_id != user_id:
                continue
            day = self.day_of(record.at)
            if month_start <= day <= today:
                tokens = record.input_tokens + record.output_tokens
                month_total += tokens
                if day == today:
                    day_total += tokens
        return day_total, month_total

    def add_maintenance(self, job: MaintenanceJob) -> None:
        self._jobs.append(job)

    # the background task

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-ledger")

    async def aclose(self) -> None:
        """Stops the task after a last flush; records that still cannot be written are logged as lost."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:
            logger.exception("usage: %d record(s) could not be written at shutdown", len(self._buffer))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_maintenance = loop.time() + FIRST_MAINTENANCE_AFTER
        while not self._closing:
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.exception("usage: writing %d record(s) failed; kept for the next try", len(self._buffer))
            if not self._closing and loop.time() >= next_maintenance:
                next_maintenance = loop.time() + MAINTENANCE_EVERY
                try:
                    await self.maintain()
                except Exception:
                    logger.exception("usage: maintenance failed")

    async def flush(self) -> int:
        """Writes everything buffered in one transaction; on failure the records go back to the buffer."""
        async with self._lock:
            if self._dropped:
                logger.error("usage: buffer full, %d record(s) dropped", self._dropped)
                self._dropped = 0
            if not self._buffer:
                return 0
            batch, self._buffer = self._buffer, []
            self._writing = batch
            try:
                async with session_scope(self._sessionmaker) as session:
                    await UsageRepository(session).insert_events([self._row(record) for record in batch])
            except BaseException:
                room = max(0, self._max_buffer - len(self._buffer))
                self._dropped += max(0, len(batch) - room)
                self._buffer[:0] = batch[:room]
                raise
            finally:
                self._writing = []
            return len(batch)

    def _row(self, record: UsageRecord) -> dict[str, Any]:
        return {
            "id": uuid7(),
            "user_id": record.user_id,
            "api_key_id": record.api_key_id,
            "source": record.source,
            "provider": record.model.partition("/")[0][:64],
            "model": record.model[:200],
            "status": record.status[:20],
            "input_tokens": max(0, record.input_tokens),
            "output_tokens": max(0, record.output_tokens),
            "cost_nanousd": self.prices.cost_nanousd(record.model, record.input_tokens, record.output_tokens),
            "latency_ms": max(0, record.latency_ms),
            "ttft_ms": record.ttft_ms,
            "day": self.day_of(record.at),
            "created_at": record.at,
        }

    # maintenance

    async def maintain(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        await self.rollup(now)
        for job in self._jobs:
            await job(now)

    async def rollup(self, now: datetime | None = None) -> int:
        """Folds events older than the retention into daily totals; returns how many were folded.

        Each batch deletes its events and adds their totals in one transaction. If another instance got
        some of them first, the delete counts fewer rows and this batch is undone, so nothing is counted twice.
        """
        cutoff = (now or utcnow()) - self._retention
        folded = 0
        while True:
            try:
                async with session_scope(self._sessionmaker) as session:
                    usage = UsageRepository(session)
                    events = await usage.events_before(cutoff, ROLLUP_BATCH)
                    if events:
                        if await usage.delete_events([event.id for event in events]) != len(events):
                            raise _RolledUpElsewhere()
                        await _merge_into_daily(usage, events)
            except _RolledUpElsewhere:
                return folded
            folded += len(events)
            if len(events) < ROLLUP_BATCH:
                return folded


async def _merge_into_daily(usage: UsageRepository, events: list[UsageEvent]) -> None:
    groups: dict[GroupKey, UsageDaily] = {}
    existing = await usage.daily_rows({e.day for e in events}, {e.user_id for e in events})
    for row in existing:
        groups.setdefault((row.day, row.user_id, row.api_key_id, row.source, row.provider, row.model), row)
    new: list[UsageDaily] = []
    for event in events:
        key = (event.day, event.user_id, event.api_key_id, event.source, event.provider, event.model)
        found = groups.get(key)
        if found is None:
            found = UsageDaily(
                day=event.day,
                user_id=event.user_id,
                api_key_id=event.api_key_id,
                source=event.source,
                provider=event.provider,
                model=event.model,
                requests=0,
                failures=0,
                input_tokens=0,
                output_tokens=0,
                cost_nanousd=0,
                latency_ms_sum=0,
                ttft_ms_sum=0,
                ttft_count=0,
            )
            groups[key] = found
            new.append(found)
        row = found
        row.requests += 1
        row.failures += int(event.status == "failed")
        row.input_tokens += event.input_tokens
        row.output_tokens += event.output_tokens
        row.cost_nanousd += event.cost_nanousd
        row.latency_ms_sum += event.latency_ms
        if event.ttft_ms is not None:
            row.ttft_ms_sum += event.ttft_ms
            row.ttft_count += 1
    await usage.add_daily(new)
