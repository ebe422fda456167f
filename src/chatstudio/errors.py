"""The one error tree of the service; rendered by one handler in main.py.

Pure Python on purpose: services raise these without knowing about HTTP frameworks.
"""

from __future__ import annotations

from typing import Any, ClassVar


def error_payload(code: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The one error body: `{"error": {"code", "message", "request_id", ...}}`."""
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}}


class AppError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    default_message: ClassVar[str] = "The request could not be processed."
    # True when the work done before the refusal must still be committed (see db.session_scope).
    keeps_changes: ClassVar[bool] = False

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class BadRequest(AppError):
    pass


class InvalidInput(AppError):
    """A well-formed request whose values break a rule (password policy, bad cursor ...)."""

    status_code = 422
    code = "invalid_input"
    default_message = "The request contains an invalid value."


class WeakPassword(InvalidInput):
    code = "weak_password"
    default_message = "The password does not meet the password policy."


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"
    default_message = "The pagination cursor is not valid."


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    default_message = "Authentication is required."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    default_message = "Incorrect email or password."


class InvalidToken(Unauthorized):
    code = "invalid_token"
    default_message = "The token is invalid or has expired."


class RefreshTokenReused(Unauthorized):
    code = "refresh_token_reused"
    keeps_changes = True

    def __init__(self, message: str | None = None, *, user_id: object = None) -> None:
        super().__init__(message)
        self.user_id = user_id  # for the audit trail

    default_message = "This refresh token was already used; the session has been revoked."


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    default_message = "You are not allowed to do this."


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    default_message = "The resource was not found."


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    default_message = "The request conflicts with the current state."


class EmailTaken(Conflict):
    code = "email_taken"
    default_message = "An account with this email already exists."


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    default_message = "Too many requests."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = retry_after


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    default_message = "The service is temporarily unavailable."
