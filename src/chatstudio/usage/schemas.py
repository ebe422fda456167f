from __future__ import annotations

from datetime import date
from typing import Literal

from chatstudio.schemas import ResponseModel

UserGroupBy = Literal["day", "model"]
AdminGroupBy = Literal["day", "model", "user"]


class UsageLine(ResponseModel):
    # The day (YYYY-MM-DD in TIMEZONE), the model id, or the user id, per `group_by`.
    key: str
    email: str | None = None  # with group_by=user
    requests: int
    failures: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    avg_latency_ms: float | None
    avg_ttft_ms: float | None


class UsageReport(ResponseModel):
    start: date
    end: date
    timezone: str
    group_by: str
    items: list[UsageLine]
    total: UsageLine
