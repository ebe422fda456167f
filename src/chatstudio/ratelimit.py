"""Fixed-window rate limits, shared by every instance through Redis (one atomic Lua call per check),
or kept in process when there is no Redis.

Windows are aligned to the clock (a minute window resets at :00), so every instance agrees on them
without coordination, and the Redis keys expire by themselves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    limit: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # of the tightest window
    remaining: int
    reset_after: int  # seconds until the tightest window resets
    retry_after: int  # seconds to wait when refused


class LimiterUnavailable(Exception):
    """The shared store could not be reached; the caller decides whether to fail open or closed."""


class Limiter(Protocol):
    async def hit(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision: ...

    async def peek(self, key: str, limits: Sequence[Limit]) -> Decision: ...

    async def reset(self, key: str, limits: Sequence[Limit]) -> None: ...


def _decide(limits: Sequence[Limit], counts: Sequence[int], now: float) -> Decision:
    tightest: tuple[int, int, int] | None = None  # remaining, reset_after, limit
    retry_after = 0
    for rule, count in zip(limits, counts, strict=True):
        reset_after = max(1, math.ceil(rule.window_seconds - (now % rule.window_seconds)))
        remaining = max(0, rule.limit - count)
        if count > rule.limit:
            retry_after = max(retry_after, reset_after)
        if tightest is None or remaining < tightest[0]:
            tightest = (remaining, reset_after, rule.limit)
    assert tightest is not None
    return Decision(retry_after == 0, tightest[2], tightest[0], tightest[1], retry_after)


def _window_key(key: str, rule: Limit, now: float) -> str:
    return f"rl:{rule.name}:{key}:{int(now // rule.window_seconds)}"


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # window key -> (count, expires at)
        self._clock = clock
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        if now >= self._next_sweep:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._next_sweep = now + 60

    async def hit(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        now = self._clock()
        self._sweep(now)
        counts = []
        for rule in limits:
            window = _window_key(key, rule, now)
            count, expires = self._counts.get(window, (0, now + rule.window_seconds))
            count += cost
            self._counts[window] = (count, expires)
            counts.append(count)
        return _decide(limits, counts, now)

    async def peek(self, key: str, limits: Sequence[Limit]) -> Decision:
        now = self._clock()
        counts = [self._counts.get(_window_key(key, rule, now), (0, 0.0))[0] for rule in limits]
        return _decide(limits, counts, now)

    async def reset(self, key: str, limits: Sequence[Limit]) -> None:
        now = self._clock()
        for rule in limits:
            self._counts.pop(_window_key(key, rule, now), None)


# KEYS: one counter per window; ARGV[1]: cost, ARGV[2..]: each window's TTL. Returns the counts.
_HIT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCRBY', key, tonumber(ARGV[1]))
  if count == tonumber(ARGV[1]) then
    redis.call('EXPIRE', key, tonumber(ARGV[i + 1]))
  end
  counts[i] = count
end
return counts
"""


class RedisLimiter:
    def __init__(self, redis: Any, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock
        self._script = redis.register_script(_HIT_SCRIPT)

    async def hit(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        from redis.exceptions import RedisError

        now = self._clock()
        keys = [_window_key(key, rule, now) for rule in limits]
        ttls = [rule.window_seconds + 1 for rule in limits]
        try:
            counts = await self._script(keys=keys, args=[cost, *ttls])
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(type(exc).__name__) from exc
        return _decide(limits, [int(c) for c in counts], now)

    async def peek(self, key: str, limits: Sequence[Limit]) -> Decision:
        from redis.exceptions import RedisError

        now = self._clock()
        try:
            values = await self._redis.mget([_window_key(key, rule, now) for rule in limits])
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(type(exc).__name__) from exc
        return _decide(limits, [int(v or 0) for v in values], now)

    async def reset(self, key: str, limits: Sequence[Limit]) -> None:
        from redis.exceptions import RedisError

        now = self._clock()
        try:
            await self._redis.delete(*[_window_key(key, rule, now) for rule in limits])
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(type(exc).__name__) from exc


class FallbackLimiter:
    """Redis first; while it is down, a local limiter so traffic is still limited per instance.

    Recovery is automatic: every call tries Redis again after a short pause.
    """

    RETRY_REDIS_AFTER = 2.0

    def __init__(self, primary: Limiter, local: Limiter, clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.local = local
        self._clock = clock
        self._down_until = 0.0

    @property
    def degraded(self) -> bool:
        return self._clock() < self._down_until

    async def _call(self, method: str, *args: Any) -> Any:
        if not self.degraded:
            try:
                return await getattr(self.primary, method)(*args)
            except LimiterUnavailable as exc:
                logger.warning("rate limiter: Redis unavailable (%s); using the local limiter", exc)
                self._down_until = self._clock() + self.RETRY_REDIS_AFTER
        return await getattr(self.local, method)(*args)

    async def hit(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        result: Decision = await self._call("hit", key, limits, cost)
        return result

    async def peek(self, key: str, limits: Sequence[Limit]) -> Decision:
        result: Decision = await self._call("peek", key, limits)
        return result

    async def reset(self, key: str, limits: Sequence[Limit]) -> None:
        await self._call("reset", key, limits)

    async def hit_strict(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """For limits that must hold across instances (login): no Redis, no answer."""
        if self.degraded:
            raise LimiterUnavailable("redis is down")
        try:
            return await self.primary.hit(key, limits, cost)
        except LimiterUnavailable:
            self._down_until = self._clock() + self.RETRY_REDIS_AFTER
            raise
