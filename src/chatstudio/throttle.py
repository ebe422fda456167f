"""Who is limited how: the general per-user limit, and the stricter ones on sign-in, sign-up and
password reset. Built on ratelimit.py; knows nothing of HTTP frameworks (the edges map Decisions to
429/503 answers)."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

from chatstudio.errors import RateLimited, ServiceUnavailable
from chatstudio.ratelimit import (
    Decision,
    FallbackLimiter,
    Limit,
    LimiterUnavailable,
    MemoryLimiter,
    RedisLimiter,
)

# Per client IP, over every auth route together.
AUTH_PER_IP = (Limit("auth-ip-m", 20, 60), Limit("auth-ip-h", 200, 3600))
REGISTER_PER_IP = (Limit("register-ip-h", 20, 3600),)
RESET_PER_IP = (Limit("reset-ip-m", 5, 60),)
RESET_PER_ACCOUNT = (Limit("reset-acct-h", 3, 3600),)
# Failed sign-ins of one account from one IP: a growing wait (5 -> minutes, 10 -> an hour, 20 -> a day).
# Keyed by account *and* IP, so a stranger's failures never lock the owner out from elsewhere.
LOGIN_FAILURES_PER_ACCOUNT_IP = (
    Limit("login-fail-5m", 5, 300),
    Limit("login-fail-h", 10, 3600),
    Limit("login-fail-d", 20, 86400),
)
# Across all IPs: only a distributed guessing campaign reaches this, and it costs the owner an hour at most.
LOGIN_FAILURES_PER_ACCOUNT = (Limit("login-fail-acct-h", 100, 3600),)


class AuthLimiterDown(ServiceUnavailable):
    code = "rate_limiter_unavailable"
    default_message = "Sign-in is briefly unavailable; try again in a moment."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


class TooManyAttempts(RateLimited):
    code = "too_many_attempts"
    default_message = "Too many attempts; wait before trying again."


def account_ref(email: str) -> str:
    # Hashed so the shared store never holds email addresses.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


@dataclass
class Throttle:
    limiter: FallbackLimiter
    general: tuple[Limit, ...]
    shared: bool  # True when a Redis is configured: strict limits must then hold across instances

    @classmethod
    def create(cls, redis: Any, per_minute: int, per_hour: int) -> Throttle:
        local = MemoryLimiter()
        primary = RedisLimiter(redis) if redis is not None else local
        general = (Limit("req-m", per_minute, 60), Limit("req-h", per_hour, 3600))
        return cls(FallbackLimiter(primary, local), general, shared=redis is not None)

    async def request(self, identity: str) -> Decision:
        """The general limit: fails open to a per-instance limit while Redis is down."""
        return await self.limiter.hit(identity, self.general)

    async def _strict(self, key: str, limits: tuple[Limit, ...], cost: int = 1) -> Decision:
        try:
            if self.shared:
                return await self.limiter.hit_strict(key, limits, cost)
            return await self.limiter.hit(key, limits, cost)
        except LimiterUnavailable:
            raise AuthLimiterDown() from None

    async def _peek_strict(self, key: str, limits: tuple[Limit, ...]) -> Decision:
        try:
            if self.shared and self.limiter.degraded:
                raise LimiterUnavailable("redis is down")
            return await (self.limiter.primary if self.shared else self.limiter).peek(key, limits)
        except LimiterUnavailable:
            raise AuthLimiterDown() from None

    @staticmethod
    def _refuse(decision: Decision, message: str | None = None) -> None:
        if not decision.allowed:
            raise TooManyAttempts(decision.retry_after, message)

    async def auth_attempt(self, ip: str) -> None:
        self._refuse(await self._strict(f"ip:{ip}", AUTH_PER_IP))

    async def register_attempt(self, ip: str) -> None:
        await self.auth_attempt(ip)
        self._refuse(await self._strict(f"ip:{ip}", REGISTER_PER_IP))

    async def reset_attempt(self, ip: str, email: str) -> None:
        await self.auth_attempt(ip)
        self._refuse(await self._strict(f"ip:{ip}", RESET_PER_IP))
        # Over the per-account limit the request is still answered 202 by the caller, silently:
        # refusing would tell a stranger the address has an account.
        decision = await self._strict(f"acct:{account_ref(email)}", RESET_PER_ACCOUNT)
        if not decision.allowed:
            raise ResetMailSuppressed()

    async def before_login(self, ip: str, email: str) -> None:
        await self.auth_attempt(ip)
        account = account_ref(email)
        for key, limits in (
            (f"acct-ip:{account}:{ip}", LOGIN_FAILURES_PER_ACCOUNT_IP),
            (f"acct:{account}", LOGIN_FAILURES_PER_ACCOUNT),
        ):
            decision = await self._peek_strict(key, limits)
            # peek counts failures so far; `remaining == 0` means the next failure would be over.
            if decision.remaining == 0:
                raise TooManyAttempts(decision.reset_after)

    async def login_failed(self, ip: str, email: str) -> None:
        account = account_ref(email)
        await self._strict(f"acct-ip:{account}:{ip}", LOGIN_FAILURES_PER_ACCOUNT_IP)
        await self._strict(f"acct:{account}", LOGIN_FAILURES_PER_ACCOUNT)

    async def login_succeeded(self, ip: str, email: str) -> None:
        with contextlib.suppress(LimiterUnavailable):  # the counters expire on their own
            await self.limiter.reset(f"acct-ip:{account_ref(email)}:{ip}", LOGIN_FAILURES_PER_ACCOUNT_IP)


class ResetMailSuppressed(Exception):
    """The account asked for too many reset mails: answer as usual, send nothing."""
