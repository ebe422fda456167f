from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints, field_validator

from chatstudio.schemas import RequestModel, ResponseModel

Scope = Literal["chat", "read"]
KeyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class ApiKeyCreate(RequestModel):
    name: KeyName
    # Timezone-aware on purpose: a naive time would be read in whatever zone the client assumed.
    expires_at: AwareDatetime | None = None
    # No scopes (or an empty list) means `chat` only.
    scopes: Annotated[list[Scope], Field(max_length=2)] | None = None

    @field_validator("scopes")
    @classmethod
    def _unique(cls, value: list[Scope] | None) -> list[Scope] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("scopes must not repeat")
        return value


class ApiKeyOut(ResponseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    # Shown once, in the answer to the creation; only its hash is stored.
    key: str


class ApiKeyList(ResponseModel):
    items: list[ApiKeyOut]
