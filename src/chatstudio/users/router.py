from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response, status
from pydantic import ValidationError

from chatstudio.audit.service import FAILURE
from chatstudio.deps import (
    AuditDep,
    CurrentUser,
    MailerDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    ThrottleDep,
    client_ip,
)
from chatstudio.errors import AppError, BadRequest, InvalidCredentials, RefreshTokenReused
from chatstudio.throttle import ResetMailSuppressed, account_ref
from chatstudio.users.schemas import (
    ChangePasswordRequest,
    LoginRequest,
    PasswordResetConfirm,
    PasswordResetRequest,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    UpdateMeRequest,
    UserOut,
)
from chatstudio.users.service import AuthService, IssuedTokens

auth_router = APIRouter(prefix="/auth", tags=["auth"])
users_router = APIRouter(prefix="/users", tags=["users"])

_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LoginRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["password"]},
                        "username": {
                            "type": "string",
                            "description": "the account's email",
                        },
                        "password": {"type": "string", "format": "password"},
                    },
                }
            },
        },
    }
}


def _token_pair(tokens: IssuedTokens) -> TokenPair:
    return TokenPair(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_in=tokens.expires_in,
    )


@auth_router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def register(
    body: RegisterRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    throttle: ThrottleDep,
    audit: AuditDep,
) -> Any:
    await throttle.register_attempt(client_ip(request))
    try:
        user = await AuthService(session, settings).register(email=body.email, password=body.password, name=body.name)
    except AppError as exc:
        await audit("auth.register", outcome=FAILURE, details={"reason": exc.code})
        raise
    await audit("auth.register", actor_id=user.id, target_type="user", target_id=user.id)
    return user


async def _read_login(request: Request) -> LoginRequest:
    """JSON for API clients, the OAuth2 password form for /docs' Authorize button."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            grant_type = form.get("grant_type")
            if grant_type not in (None, "", "password"):
                raise BadRequest("grant_type must be 'password'.")
            return LoginRequest(
                email=str(form.get("username") or ""),
                password=str(form.get("password") or ""),
            )
        return LoginRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


@auth_router.post("/login", response_model=TokenPair, openapi_extra=_LOGIN_BODY)
async def login(
    request: Request, session: SessionDep, settings: SettingsDep, throttle: ThrottleDep, audit: AuditDep
) -> Any:
    body = await _read_login(request)
    ip = client_ip(request)
    try:
        await throttle.before_login(ip, body.email)
        tokens = await AuthService(session, settings).login(
            email=body.email, password=body.password, user_agent=request.headers.get("user-agent")
        )
    except AppError as exc:
        if isinstance(exc, InvalidCredentials):
            await throttle.login_failed(ip, body.email)
        # The attempted address is kept only as a digest: it may be a mistyped password.
        await audit("auth.login", outcome=FAILURE, details={"reason": exc.code, "account": account_ref(body.email)})
        raise
    await throttle.login_succeeded(ip, body.email)
    await audit("auth.login", actor_id=tokens.user_id)
    return _token_pair(tokens)


@auth_router.post("/refresh", response_model=TokenPair)
async def refresh(body: RefreshRequest, session: SessionDep, settings: SettingsDep, audit: AuditDep) -> Any:
    try:
        return _token_pair(await AuthService(session, settings).refresh(body.refresh_token))
    except RefreshTokenReused as exc:
        await audit("auth.refresh_token_reused", outcome=FAILURE, actor_id=exc.user_id, target_type="user")
        raise


@auth_router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(principal: PrincipalDep, session: SessionDep, settings: SettingsDep, audit: AuditDep) -> Response:
    """Ends this sign-in: its refresh-token family and this access token stop working at once."""
    await AuthService(session, settings).logout(principal.claims)
    await audit("auth.logout", actor_id=principal.user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auth_router.post("/password-reset/request", status_code=status.HTTP_202_ACCEPTED)
async def request_password_reset(
    body: PasswordResetRequest,
    session: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    background: BackgroundTasks,
    request: Request,
    throttle: ThrottleDep,
    audit: AuditDep,
) -> dict[str, str]:
    try:
        await throttle.reset_attempt(client_ip(request), body.email)
        mail = await AuthService(session, settings).request_password_reset(body.email)
    except ResetMailSuppressed:
        mail = None
    await audit(
        "auth.password_reset.request", details={"account": account_ref(body.email), "mail_sent": mail is not None}
    )
    if mail is not None:
        # Sent after the response (and after the commit), so the answer takes the same time
        # whether or not the account exists.
        background.add_task(mailer.send, mail)
    return {
        "status": "accepted",
        "message": "If an account exists for this address, a reset code is on its way.",
    }


@auth_router.post("/password-reset/confirm", status_code=status.HTTP_204_NO_CONTENT)
async def confirm_password_reset(
    body: PasswordResetConfirm,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    throttle: ThrottleDep,
    audit: AuditDep,
) -> Response:
    await throttle.auth_attempt(client_ip(request))
    try:
        user_id = await AuthService(session, settings).confirm_password_reset(
            token=body.token, new_password=body.new_password
        )
    except AppError as exc:
        await audit("auth.password_reset.confirm", outcome=FAILURE, details={"reason": exc.code})
        raise
    await audit("auth.password_reset.confirm", actor_id=user_id, target_type="user", target_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users_router.get("/me", response_model=UserOut)
async def read_me(user: CurrentUser) -> Any:
    return user


@users_router.patch("/me", response_model=UserOut)
async def update_me(body: UpdateMeRequest, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Any:
    if "name" not in body.model_fields_set:
        return user
    return await AuthService(session, settings).update_profile(user, name=body.name)


@users_router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(
    body: ChangePasswordRequest,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
) -> Response:
    user_id = principal.user.id
    try:
        await AuthService(session, settings).change_password(
            principal.user,
            current_password=body.current_password,
            new_password=body.new_password,
            current_session=principal.claims.session_id,
        )
    except AppError as exc:
        await audit("user.password_change", outcome=FAILURE, actor_id=user_id, details={"reason": exc.code})
        raise
    await audit("user.password_change", actor_id=user_id, target_type="user", target_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
