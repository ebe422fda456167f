from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import EmailStr, Field, StringConstraints

from chatstudio.schemas import RequestModel, ResponseModel
from chatstudio.security import PASSWORD_MAX_LENGTH

# The policy (length, common list, email) is enforced by security.check_password_policy so that
# every path (register, change, reset) gives the same `weak_password` answer; the schema only
# caps the size so nobody can make us hash a megabyte.
Password = Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX_LENGTH * 4)]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class RegisterRequest(RequestModel):
    email: EmailStr
    password: Password
    name: DisplayName | None = None


class LoginRequest(RequestModel):
    email: Annotated[str, Field(min_length=1, max_length=320)]
    password: Password


class RefreshRequest(RequestModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=200)]


class UpdateMeRequest(RequestModel):
    name: DisplayName | None = None


class ChangePasswordRequest(RequestModel):
    current_password: Password
    new_password: Password


class PasswordResetRequest(RequestModel):
    email: Annotated[str, Field(min_length=1, max_length=320)]


class PasswordResetConfirm(RequestModel):
    token: Annotated[str, Field(min_length=1, max_length=200)]
    new_password: Password


class UserOut(ResponseModel):
    id: uuid.UUID
    email: str
    name: str | None
    role: str
    is_active: bool
    created_at: datetime


class TokenPair(ResponseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int
