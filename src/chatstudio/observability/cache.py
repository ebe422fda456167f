"""A response cache for GETs whose answer is the same for every user, and ETags for the rest.

Shared entries live in Redis when one is configured, so every instance answers from one copy and one
invalidation reaches them all; without Redis they live in this process. Invalidation bumps a
namespace's generation: old entries are never read again and expire on their own.

Only answers that do not depend on who asks may be stored here. Per-user lists get an ETag instead:
the client keeps its copy and revalidates it (`If-None-Match` -> 304), nothing is shared.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger(__name__)

PREFIX = "chatstudio:cache:"
MAX_LOCAL_ENTRIES = 1024


class ResponseCache:
    def __init__(self, redis: Any | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self._clock = clock
        self._local: dict[str, tuple[float, bytes]] = {}
        self._generations: dict[str, int] = {}

    async def _generation(self, namespace: str) -> int:
        if self.redis is None:
            return self._generations.get(namespace, 0)
        raw = await self.redis.get(f"{PREFIX}gen:{namespace}")
        return int(raw) if raw else 0

    async def get(self, namespace: str, key: str) -> bytes | None:
        try:
            full = f"{PREFIX}{namespace}:{await self._generation(namespace)}:{key}"
            if self.redis is not None:
                value = await self.redis.get(full)
                return bytes(value) if value is not None else None
        except Exception as exc:  # noqa: BLE001 - a cache that is down is a miss, never a failed request
            log.warning("response cache unavailable (%s)", type(exc).__name__)
            return None
        entry = self._local.get(full)
        if entry is None or entry[0] <= self._clock():
            self._local.pop(full, None)
            return None
        return entry[1]

    async def set(self, namespace: str, key: str, value: bytes, ttl: float) -> None:
        try:
            full = f"{PREFIX}{namespace}:{await self._generation(namespace)}:{key}"
            if self.redis is not None:
                await self.redis.set(full, value, px=max(1, int(ttl * 1000)))
                return
        except Exception as exc:  # noqa: BLE001
            log.warning("response cache unavailable (%s)", type(exc).__name__)
            return
        if len(self._local) >= MAX_LOCAL_ENTRIES:
            now = self._clock()
            self._local = {k: v for k, v in self._local.items() if v[0] > now}
            if len(self._local) >= MAX_LOCAL_ENTRIES:
                self._local.pop(next(iter(self._local)))
        self._local[full] = (self._clock() + ttl, value)

    async def invalidate(self, namespace: str) -> None:
        """Every instance stops serving the namespace's entries from now on."""
        self._generations[namespace] = self._generations.get(namespace, 0) + 1
        if self.redis is not None:
            try:
                await self.redis.incr(f"{PREFIX}gen:{namespace}")
            except Exception as exc:  # noqa: BLE001
                log.warning("response cache invalidation failed (%s)", type(exc).__name__)
        self._local = {k: v for k, v in self._local.items() if not k.startswith(f"{PREFIX}{namespace}:")}


def response_cache(request: Request) -> ResponseCache:
    cache = getattr(request.app.state, "response_cache", None)
    if cache is None:  # an app whose lifespan did not run the observability set-up
        cache = request.app.state.response_cache = ResponseCache()
    assert isinstance(cache, ResponseCache)
    return cache


async def cached_json(
    request: Request, namespace: str, key: str, ttl: float, produce: Callable[[], Awaitable[bytes]]
) -> Response:
    """A shared JSON answer from the cache, or made by `produce` and stored; served with an ETag."""
    cache = response_cache(request)
    body = await cache.get(namespace, key)
    hit = body is not None
    if body is None:
        body = await produce()
        await cache.set(namespace, key, body, ttl)
    response = json_with_etag(request, body)
    response.headers["X-Cache"] = "hit" if hit else "miss"
    return response


def etag_of(body: bytes) -> str:
    # Weak: the gzip layer may change the bytes on the wire, the representation stays the same.
    return 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in header.split(","))


def json_with_etag(request: Request, body: bytes) -> Response:
    """The JSON body with its ETag, or an empty 304 when the client already holds this version."""
    etag = etag_of(body)
    headers = {"ETag": etag}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
