"""Per-user token budgets (daily and monthly), checked before a provider is called.

A user's budget is theirs (set by an admin) or the global default (DAILY_TOKEN_BUDGET,
MONTHLY_TOKEN_BUDGET); both off by default, and then this costs nothing. Spending is what the usage
ledger holds (stored rows plus the records still buffered in this process), so the real usage
of every finished call reconciles the estimate the next check starts from. Days and months are cut in
TIMEZONE, like the usage reports.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.db import utcnow
from chatstudio.errors import RateLimited
from chatstudio.usage.ledger import UsageLedger
from chatstudio.usage.repository import UsageRepository


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"
    default_message = "Your token budget is used up; it renews at the start of the next period."


@dataclass(frozen=True, slots=True)
class Spending:
    today: int
    this_month: int


@dataclass
class Budgets:
    ledger: UsageLedger
    default_daily: int | None = None
    default_monthly: int | None = None

    def limits_for(self, daily: int | None, monthly: int | None) -> tuple[int | None, int | None]:
        return (
            daily if daily is not None else self.default_daily,
            monthly if monthly is not None else self.default_monthly,
        )

    async def spending(self, session: AsyncSession, user_id: uuid.UUID, now: datetime) -> Spending:
        today = self.ledger.day_of(now)
        month_start = today.replace(day=1)
        rows = await UsageRepository(session).totals("day", month_start, today, user_id)
        by_day: dict[object, int] = {}
        for row in rows:
            by_day[row.key] = by_day.get(row.key, 0) + row.input_tokens + row.output_tokens
        pending_today, pending_month = self.ledger.pending_tokens(user_id, today, month_start)
        month = sum(by_day.values()) + pending_month
        return Spending(by_day.get(today, 0) + pending_today, month)

    async def check(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        *,
        daily: int | None,
        monthly: int | None,
        estimated_tokens: int,
    ) -> None:
        """Refuse (429 budget_exceeded) when this call would start beyond a budget; no provider is called."""
        daily, monthly = self.limits_for(daily, monthly)
        if daily is None and monthly is None:
            return
        now = utcnow()
        spent = await self.spending(session, user_id, now)
        local = now.astimezone(self.ledger.timezone)
        if daily is not None and spent.today + estimated_tokens > daily:
            tomorrow = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            raise BudgetExceeded(int((tomorrow - local).total_seconds()) + 1)
        if monthly is not None and spent.this_month + estimated_tokens > monthly:
            next_month = local.replace(day=1) + timedelta(days=32)
            first = next_month.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            raise BudgetExceeded(int((first - local).total_seconds()) + 1)
