"""Annotated dependencies shared by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatstudio.chat.turns import TurnManager
from chatstudio.config import Settings
from chatstudio.db import session_scope
from chatstudio.errors import Forbidden, Unauthorized
from chatstudio.mail import Mailer
from chatstudio.security import AccessClaims
from chatstudio.throttle import Throttle
from chatstudio.users.models import User
from chatstudio.users.service import AuthService


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_mailer(request: Request) -> Mailer:
    return cast(Mailer, request.app.state.mailer)


def get_turns(request: Request) -> TurnManager:
    return cast(TurnManager, request.app.state.turns)


def get_redis(request: Request) -> Redis | None:
    return cast("Redis | None", request.app.state.redis)


def get_throttle(request: Request) -> Throttle:
    return cast(Throttle, request.app.state.throttle)


def client_ip(request: Request) -> str:
    """The peer, or the client named by a trusted proxy (see http_security.ProxyHeadersMiddleware)."""
    return request.client.host if request.client else "unknown"


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    factory = cast(async_sessionmaker[AsyncSession], request.app.state.sessionmaker)
    async with session_scope(factory) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
MailerDep = Annotated[Mailer, Depends(get_mailer)]
ThrottleDep = Annotated[Throttle, Depends(get_throttle)]
TurnsDep = Annotated[TurnManager, Depends(get_turns)]
RedisDep = Annotated["Redis | None", Depends(get_redis)]
# scope="function": commit (or roll back) before the response goes out, so a 2xx always means
# the change is stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)


@dataclass(frozen=True, slots=True)
class Principal:
    user: User
    claims: AccessClaims


async def get_principal(
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    if not token:
        raise Unauthorized()
    user, claims = await AuthService(session, settings).authenticate_access_token(token)
    return Principal(user, claims)


async def get_current_user(
    principal: Annotated[Principal, Depends(get_principal)],
) -> User:
    return principal.user


async def get_admin_user(user: Annotated[User, Depends(get_current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("Administrator rights are required.")
    return user


PrincipalDep = Annotated[Principal, Depends(get_principal)]
CurrentUser = Annotated[User, Depends(get_current_user)]
AdminUser = Annotated[User, Depends(get_admin_user)]
