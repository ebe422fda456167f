"""Annotated dependencies shared by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatstudio.apikeys.auth import ApiKeyAuthenticator, AuthenticatedKey
from chatstudio.apikeys.service import check_scope, is_api_key
from chatstudio.audit.service import AuditLog, RequestContext
from chatstudio.chat.turns import TurnManager
from chatstudio.config import Settings
from chatstudio.db import outside_transaction, session_scope
from chatstudio.errors import Forbidden, Unauthorized
from chatstudio.mail import Mailer
from chatstudio.security import AccessClaims
from chatstudio.throttle import Throttle
from chatstudio.usage.ledger import request_api_key
from chatstudio.users.models import User
from chatstudio.users.service import AuthService


async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def get_mailer(request: Request) -> Mailer:
    return cast(Mailer, request.app.state.mailer)


async def get_turns(request: Request) -> TurnManager:
    return cast(TurnManager, request.app.state.turns)


async def get_redis(request: Request) -> Redis | None:
    return cast("Redis | None", request.app.state.redis)


async def get_throttle(request: Request) -> Throttle:
    return cast(Throttle, request.app.state.throttle)


def client_ip(request: Request) -> str:
    """The peer, or the client named by a trusted proxy (see http_security.TrustedProxies, applied by the edge)."""
    return request.client.host if request.client else "unknown"


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


@dataclass(frozen=True, slots=True)
class Auditor:
    """The audit log bound to one request's context (client IP, user agent, request id)."""

    log: AuditLog
    context: RequestContext

    async def __call__(self, action: str, **fields: Any) -> None:
        await self.log.record(self.context, action, **fields)


async def get_auditor(request: Request) -> Auditor:
    context = RequestContext(client_ip(request), request.headers.get("user-agent"), request_id_of(request))
    return Auditor(cast(AuditLog, request.app.state.audit), context)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    factory = cast(async_sessionmaker[AsyncSession], request.app.state.sessionmaker)
    async with session_scope(factory) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
MailerDep = Annotated[Mailer, Depends(get_mailer)]
ThrottleDep = Annotated[Throttle, Depends(get_throttle)]
AuditDep = Annotated[Auditor, Depends(get_auditor)]
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
    await outside_transaction(session)
    user, claims = await AuthService(session, settings).authenticate_access_token(token)
    # Hand the connection back to the pool now: a chat turn opens its own sessions, and a request
    # holding one idle connection while waiting for another deadlocks the pool under load. The
    # session stays usable (expire_on_commit=False) and checks a connection out again if needed.
    await session.commit()
    return Principal(user, claims)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a signed-in user (JWT), or an API key acting for its owner within its scopes.
    `PrincipalDep` stays JWT-only, for the routes that need the sign-in (logout, password change)."""

    user: User
    api_key: AuthenticatedKey | None = None


async def authenticate_api_key(request: Request, token: str) -> AuthenticatedKey:
    """Cached in process (see apikeys.auth): no query per request. The key's scopes must cover the route."""
    found = await cast(ApiKeyAuthenticator, request.app.state.api_keys).authenticate(token)
    check_scope(found.key.scopes, request.method, request.scope["path"])
    return found


async def get_caller(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Caller:
    if token and is_api_key(token):
        found = await authenticate_api_key(request, token)
        # Chat turns run in tasks copied from this context: their usage is charged to the key.
        request_api_key.set(found.key.id)
        return Caller(found.user, found)
    principal = await get_principal(session, settings, token)
    request_api_key.set(None)
    return Caller(principal.user)


async def get_current_user(caller: Annotated[Caller, Depends(get_caller)]) -> User:
    return caller.user


async def get_admin_user(caller: Annotated[Caller, Depends(get_caller)]) -> User:
    if caller.api_key is not None:
        raise Forbidden("API keys cannot be used for administration.")
    if not caller.user.is_admin:
        raise Forbidden("Administrator rights are required.")
    return caller.user


PrincipalDep = Annotated[Principal, Depends(get_principal)]
CallerDep = Annotated[Caller, Depends(get_caller)]
CurrentUser = Annotated[User, Depends(get_current_user)]
AdminUser = Annotated[User, Depends(get_admin_user)]
