"""Account and authentication rules. Flushes, never commits: the request's unit of work does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio import security
from chatstudio.config import Settings
from chatstudio.db import utcnow
from chatstudio.errors import (
    EmailTaken,
    InvalidCredentials,
    InvalidInput,
    InvalidToken,
    RefreshTokenReused,
)
from chatstudio.mail import OutgoingMail
from chatstudio.users.models import Role, User
from chatstudio.users.repository import (
    PasswordResetRepository,
    SessionRepository,
    UserRepository,
)


def normalise_email(raw: str) -> str:
    """Syntax-checked and lower-cased as a whole, so `Ann@X.org` and `ann@x.org` are one account."""
    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        raise InvalidInput("The email address is not valid.") from None


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    user_id: uuid.UUID


class AuthService:
    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.users = UserRepository(session)
        self.sessions = SessionRepository(session)
        self.resets = PasswordResetRepository(session)

    # accounts

    async def register(self, *, email: str, password: str, name: str | None, role: Role = Role.USER) -> User:
        email = normalise_email(email)
        security.check_password_policy(password, email)
        if await self.users.email_exists(email):
            raise EmailTaken()
        user = User(
            email=email,
            name=name,
            password_hash=await security.hash_password_async(password),
            role=role,
        )
        try:
            async with self.session.begin_nested():
                await self.users.add(user)
        except IntegrityError:  # lost a race with a concurrent registration of the same email
            raise EmailTaken() from None
        return user

    async def authenticate(self, *, email: str, password: str) -> User:
        try:
            email = normalise_email(email)
        except InvalidInput:
            email = ""
        user = await self.users.get_by_email(email) if email else None
        if user is None:
            # Same work as a real check, so timing does not reveal which emails have accounts.
            await security.verify_password_async(security.dummy_password_hash(), password)
            raise InvalidCredentials()
        if not await security.verify_password_async(user.password_hash, password) or not user.is_active:
            raise InvalidCredentials()
        if security.password_needs_rehash(user.password_hash):
            user.password_hash = await security.hash_password_async(password)
        return user

    async def login(self, *, email: str, password: str, user_agent: str | None) -> IssuedTokens:
        user = await self.authenticate(email=email, password=password)
        auth_session = await self.sessions.create(user.id, user_agent[:300] if user_agent else None)
        return await self._issue(user.id, auth_session.id)

    async def update_profile(self, user: User, *, name: str | None) -> User:
        user.name = name
        await self.session.flush()
        return user

    async def change_password(
        self,
        user: User,
        *,
        current_password: str,
        new_password: str,
        current_session: uuid.UUID,
    ) -> None:
        if not await security.verify_password_async(user.password_hash, current_password):
            raise InvalidCredentials("The current password is incorrect.")
        security.check_password_policy(new_password, user.email)
        now = utcnow()
        user.password_hash = await security.hash_password_async(new_password)
        user.password_changed_at = now
        await self.sessions.revoke_all_for_user(user.id, now, except_session=current_session)
        await self.resets.invalidate_for_user(user.id, now)
        await self.session.flush()

    # tokens

    async def _issue(self, user_id: uuid.UUID, session_id: uuid.UUID) -> IssuedTokens:
        lifetime = timedelta(minutes=self.settings.access_token_expire_minutes)
        access, _ = security.create_access_token(
            user_id=user_id,
            session_id=session_id,
            key=self.settings.signing_key,
            algorithm=self.settings.algorithm,
            lifetime=lifetime,
        )
        refresh = security.new_opaque_token()
        expires_at = utcnow() + timedelta(days=self.settings.refresh_token_expire_days)
        await self.sessions.add_refresh_token(session_id, security.hash_opaque_token(refresh), expires_at)
        return IssuedTokens(access, refresh, int(lifetime.total_seconds()), user_id)

    async def authenticate_access_token(self, token: str) -> tuple[User, security.AccessClaims]:
        claims = security.decode_access_token(token, key=self.settings.signing_key, algorithm=self.settings.algorithm)
        user = await self.users.get_authenticated(user_id=claims.user_id, session_id=claims.session_id, jti=claims.jti)
        if user is None:
            raise InvalidToken()
        return user, claims

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        found = await self.sessions.get_refresh_token(security.hash_opaque_token(refresh_token))
        if found is None:
            raise InvalidToken("The refresh token is invalid.")
        token, auth_session = found
        now = utcnow()
        if auth_session.revoked_at is not None or token.expires_at <= now:
            raise InvalidToken("The refresh token is invalid or has expired.")
        if token.used_at is not None or not await self.sessions.mark_refresh_token_used(token.id, now):
            # A rotated token came back: someone holds a copy. Kill the whole family.
            await self.sessions.revoke(auth_session.id, now)
            raise RefreshTokenReused(user_id=auth_session.user_id)
        user = await self.users.get(auth_session.user_id)
        if user is None or not user.is_active:
            raise InvalidToken()
        return await self._issue(user.id, auth_session.id)

    async def logout(self, claims: security.AccessClaims) -> None:
        now = utcnow()
        await self.sessions.revoke(claims.session_id, now)
        await self.sessions.revoke_access_token(claims.jti, claims.expires_at)

    # password reset

    async def request_password_reset(self, email: str) -> OutgoingMail | None:
        """Returns the mail to send, or None; the caller answers 202 either way."""
        try:
            email = normalise_email(email)
        except InvalidInput:
            return None
        user = await self.users.get_by_email(email)
        if user is None or not user.is_active:
            return None
        token = security.new_opaque_token()
        minutes = self.settings.password_reset_expire_minutes
        now = utcnow()
        await self.resets.add(
            user.id,
            security.hash_opaque_token(token),
            created_at=now,
            expires_at=now + timedelta(minutes=minutes),
        )
        link = f"{self.settings.public_base_url.rstrip('/')}/reset-password#token={token}"
        body = (
            "Someone asked to reset the password of your AI Chat Studio account.\n\n"
            f"Reset code: {token}\n"
            f"Or open: {link}\n\n"
            f"The code works once and expires in {minutes} minutes. "
            "If you did not ask for this, ignore this message; your password stays as it is.\n"
        )
        return OutgoingMail(to=user.email, subject="Reset your AI Chat Studio password", body=body)

    async def confirm_password_reset(self, *, token: str, new_password: str) -> uuid.UUID:
        now = utcnow()
        found = await self.resets.find_live(security.hash_opaque_token(token), now)
        user = await self.users.get(found[1]) if found else None
        if found is None or user is None or not user.is_active:
            raise InvalidToken("The reset code is invalid, used or expired.")
        # Policy first, so a rejected password does not burn the single-use code.
        security.check_password_policy(new_password, user.email)
        if not await self.resets.claim(found[0], now):
            raise InvalidToken("The reset code is invalid, used or expired.")
        user.password_hash = await security.hash_password_async(new_password)
        user.password_changed_at = now
        await self.sessions.revoke_all_for_user(user.id, now)
        await self.resets.invalidate_for_user(user.id, now)
        await self.session.flush()
        return user.id

    # administration

    async def ensure_admin(self, *, email: str, password: str | None) -> tuple[User, bool]:
        """Promote an existing account or create one; returns (user, created)."""
        email = normalise_email(email)
        user = await self.users.get_by_email(email)
        if user is not None:
            user.role = Role.ADMIN
            user.is_active = True
            if password:
                security.check_password_policy(password, email)
                user.password_hash = await security.hash_password_async(password)
            await self.session.flush()
            return user, False
        if not password:
            raise InvalidInput("A password is required to create a new admin account.")
        return await self.register(email=email, password=password, name=None, role=Role.ADMIN), True

    async def ensure_admin_at_startup(self, *, email: str, password: str | None) -> None:
        """ADMIN_EMAIL: create the account, or promote it only when ADMIN_PASSWORD proves ownership."""
        email = normalise_email(email)
        user = await self.users.get_by_email(email)
        if user is None:
            if not password:
                raise InvalidInput("ADMIN_PASSWORD is required to create the ADMIN_EMAIL account.")
            await self.register(email=email, password=password, name=None, role=Role.ADMIN)
            return
        if user.is_admin:
            return
        if not password or not await security.verify_password_async(user.password_hash, password):
            raise InvalidInput("the existing account was not promoted: ADMIN_PASSWORD does not match it.")
        user.role = Role.ADMIN
        await self.session.flush()
