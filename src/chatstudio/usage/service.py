"""Usage reports: sums over the recent detail and the rolled-up days, cut in TIMEZONE. Never commits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.errors import InvalidInput
from chatstudio.usage.prices import nano_to_usd
from chatstudio.usage.repository import GroupBy, Totals, UsageRepository
from chatstudio.usage.schemas import UsageLine, UsageReport

DEFAULT_DAYS = 30
MAX_DAYS = 366


class InvalidRange(InvalidInput):
    code = "invalid_range"
    default_message = "`from` must not be after `to`."


def _line(key: str, sums: list[int], email: str | None = None) -> UsageLine:
    requests, failures, tokens_in, tokens_out, cost, latency, ttft, ttft_count = sums
    return UsageLine(
        key=key,
        email=email,
        requests=requests,
        failures=failures,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        total_tokens=tokens_in + tokens_out,
        cost_usd=nano_to_usd(cost),
        avg_latency_ms=round(latency / requests, 1) if requests else None,
        avg_ttft_ms=round(ttft / ttft_count, 1) if ttft_count else None,
    )


def _sums(row: Totals) -> list[int]:
    return [
        row.requests,
        row.failures,
        row.input_tokens,
        row.output_tokens,
        row.cost_nanousd,
        row.latency_ms_sum,
        row.ttft_ms_sum,
        row.ttft_count,
    ]


class UsageService:
    def __init__(self, session: AsyncSession, timezone: str) -> None:
        self.usage = UsageRepository(session)
        self.timezone = timezone

    def today(self) -> date:
        return datetime.now(ZoneInfo(self.timezone)).date()

    async def report(
        self, *, user_id: uuid.UUID | None, start: date | None, end: date | None, group_by: GroupBy
    ) -> UsageReport:
        """`user_id=None` is everyone (admin). Days are inclusive; default: the last 30 days."""
        end = end or self.today()
        start = start or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise InvalidRange()
        if (end - start).days >= MAX_DAYS:
            raise InvalidRange(f"A report covers at most {MAX_DAYS} days.")
        merged: dict[str, list[int]] = {}
        for row in await self.usage.totals(group_by, start, end, user_id):
            key = row.key.isoformat() if isinstance(row.key, date) else str(row.key)
            sums = merged.setdefault(key, [0] * 8)
            for index, value in enumerate(_sums(row)):
                sums[index] += value
        emails: dict[uuid.UUID, str] = {}
        if group_by == "user":
            emails = await self.usage.emails_of(uuid.UUID(key) for key in merged)
        # Days in order; models and users biggest spender first, then most used.
        spend: Callable[[str], tuple[int, int, str]] = lambda k: (-merged[k][4], -merged[k][0], k)  # noqa: E731
        order = sorted(merged) if group_by == "day" else sorted(merged, key=spend)
        items = [_line(key, merged[key], emails.get(uuid.UUID(key)) if group_by == "user" else None) for key in order]
        total = [sum(column) for column in zip(*merged.values(), strict=True)] if merged else [0] * 8
        return UsageReport(
            start=start, end=end, timezone=self.timezone, group_by=group_by, items=items, total=_line("total", total)
        )
