from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from chatstudio.schemas import RequestModel, ResponseModel

Budget = Annotated[int, Field(ge=0, le=10**12)]


class AdminUserOut(ResponseModel):
    id: uuid.UUID
    email: str
    name: str | None
    role: str
    is_active: bool
    daily_token_budget: int | None
    monthly_token_budget: int | None
    created_at: datetime


class AdminUserUpdate(RequestModel):
    is_active: bool | None = None
    role: Literal["user", "admin"] | None = None
    daily_token_budget: Budget | None = None
    monthly_token_budget: Budget | None = None


class AuditEventOut(ResponseModel):
    id: uuid.UUID
    created_at: datetime
    actor_id: uuid.UUID | None
    action: str
    outcome: str
    target_type: str | None
    target_id: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any]
