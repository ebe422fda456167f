"""`GET /usage` (your own) and `GET /admin/usage` (everyone's, administrators only)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from chatstudio.deps import AdminUser, CurrentUser, SessionDep, SettingsDep
from chatstudio.usage.schemas import AdminGroupBy, UsageReport, UserGroupBy
from chatstudio.usage.service import UsageService

router = APIRouter(tags=["usage"])

From = Annotated[date | None, Query(alias="from", description="first day (YYYY-MM-DD, in TIMEZONE), inclusive")]
To = Annotated[date | None, Query(alias="to", description="last day, inclusive; default today")]


@router.get("/usage", response_model=UsageReport)
async def my_usage(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    start: From = None,
    end: To = None,
    group_by: UserGroupBy = "day",
) -> UsageReport:
    service = UsageService(session, settings.timezone)
    return await service.report(user_id=user.id, start=start, end=end, group_by=group_by)


@router.get("/admin/usage", response_model=UsageReport)
async def all_usage(
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    start: From = None,
    end: To = None,
    group_by: AdminGroupBy = "day",
    user_id: uuid.UUID | None = None,
) -> UsageReport:
    service = UsageService(session, settings.timezone)
    return await service.report(user_id=user_id, start=start, end=end, group_by=group_by)
