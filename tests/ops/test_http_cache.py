"""Compression (gzip over 1 KB when accepted, never SSE), the shared response cache for the model list,
and ETag/304 on the per-user lists."""

from __future__ import annotations

import httpx
import pytest

from chatstudio.config import Settings
from chatstudio.observability.cache import ResponseCache, etag_of
from tests.conftest import SignedIn, sign_up
from tests.ops.conftest import ops_app


async def _conversations(client: httpx.AsyncClient, user: SignedIn, count: int) -> list[str]:
    ids = []
    for n in range(count):
        body = {"title": f"conversation number {n} with a title long enough to add up"}
        ids.append((await client.post("/api/v1/conversations", json=body, headers=user.headers)).json()["id"])
    return ids


async def test_gzip_only_when_accepted_and_worth_it(ops_settings: Settings) -> None:
    async with ops_app(ops_settings) as (client, _):
        user = await sign_up(client)
        await _conversations(client, user, 12)
        gz = {**user.headers, "Accept-Encoding": "gzip"}
        big = await client.get("/api/v1/conversations", headers=gz)
        plain = await client.get("/api/v1/conversations", headers={**user.headers, "Accept-Encoding": "identity"})
        small = await client.get("/api/v1/conversations?limit=1", headers=gz)
    assert len(plain.content) > 1024
    assert big.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in big.headers["vary"].lower()
    assert big.json() == plain.json()  # httpx decoded it
    assert "content-encoding" not in plain.headers
    assert len(small.content) < 1024
    assert "content-encoding" not in small.headers


async def test_sse_is_never_compressed(ops_settings: Settings) -> None:
    async with ops_app(ops_settings) as (client, _):
        user = await sign_up(client)
        (conversation,) = await _conversations(client, user, 1)
        headers = {**user.headers, "Accept-Encoding": "gzip", "Accept": "text/event-stream"}
        async with client.stream(
            "POST",
            f"/api/v1/conversations/{conversation}/messages",
            json={"content": "hello " * 400, "model": "steady/x", "stream": True},
            headers=headers,
        ) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in response.headers
    assert raw.startswith(b"event: start")
    assert len(raw) > 1024


async def test_model_list_is_cached_and_shared(ops_settings: Settings) -> None:
    async with ops_app(ops_settings) as (client, app):
        alice = await sign_up(client)
        bob = await sign_up(client)
        first = await client.get("/api/v1/models", headers=alice.headers)
        second = await client.get("/api/v1/models", headers=bob.headers)
        assert first.status_code == second.status_code == 200
        assert first.headers["x-cache"] == "miss"
        assert second.headers["x-cache"] == "hit"
        assert first.json() == second.json()
        assert any(item["id"] == "openai/gpt-test" or item["provider"] == "openai" for item in first.json()["items"])
        await app.state.response_cache.invalidate("models")
        third = await client.get("/api/v1/models", headers=alice.headers)
        assert third.headers["x-cache"] == "miss"
        unauthenticated = await client.get("/api/v1/models")
    assert unauthenticated.status_code == 401  # the cache never answers before authentication


@pytest.mark.redis
async def test_redis_cache_is_shared_by_instances(ops_settings: Settings, redis_url: str) -> None:
    settings = Settings.model_validate({**ops_settings.model_dump(), "redis_url": redis_url})
    settings.resolve_secret_key()
    async with ops_app(settings) as (one, app_one), ops_app(settings) as (two, _):
        await app_one.state.response_cache.invalidate("models")  # a clean generation for this test
        user = await sign_up(one)
        first = await one.get("/api/v1/models", headers=user.headers)
        second = await two.get("/api/v1/models", headers=user.headers)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        await app_one.state.response_cache.invalidate("models")
        third = await two.get("/api/v1/models", headers=user.headers)
        assert third.headers["x-cache"] == "miss"


async def test_cache_entries_expire_and_invalidate() -> None:
    now = [1000.0]
    cache = ResponseCache(clock=lambda: now[0])
    await cache.set("ns", "k", b"v1", ttl=10)
    assert await cache.get("ns", "k") == b"v1"
    now[0] += 11
    assert await cache.get("ns", "k") is None
    await cache.set("ns", "k", b"v2", ttl=10)
    await cache.invalidate("ns")
    assert await cache.get("ns", "k") is None


async def test_a_broken_redis_is_a_miss_not_a_failure() -> None:
    class Broken:
        async def get(self, key: str) -> bytes:
            raise ConnectionError("down")

        async def set(self, *args: object, **kwargs: object) -> None:
            raise ConnectionError("down")

    cache = ResponseCache(Broken())
    assert await cache.get("ns", "k") is None
    await cache.set("ns", "k", b"v", ttl=1)


async def test_conversation_list_etag_and_304(ops_settings: Settings) -> None:
    async with ops_app(ops_settings) as (client, _):
        alice = await sign_up(client)
        bob = await sign_up(client)
        await _conversations(client, alice, 2)
        first = await client.get("/api/v1/conversations", headers=alice.headers)
        etag = first.headers["etag"]
        assert etag.startswith('W/"')
        again = await client.get("/api/v1/conversations", headers={**alice.headers, "If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        # another user presenting alice's tag gets his own list, never hers
        bobs = await client.get("/api/v1/conversations", headers={**bob.headers, "If-None-Match": etag})
        assert bobs.status_code == 200
        assert bobs.json()["items"] == []
        # a change makes a new version
        await _conversations(client, alice, 1)
        changed = await client.get("/api/v1/conversations", headers={**alice.headers, "If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        assert len(changed.json()["items"]) == 3


async def test_message_page_etag_and_304(ops_settings: Settings) -> None:
    async with ops_app(ops_settings) as (client, _):
        user = await sign_up(client)
        (conversation,) = await _conversations(client, user, 1)
        url = f"/api/v1/conversations/{conversation}/messages"
        empty = await client.get(url, headers=user.headers)
        assert empty.json() == {"items": [], "next_cursor": None}
        await client.post(url, json={"content": "hello", "model": "openai/x"}, headers=user.headers)
        page = await client.get(url, headers=user.headers)
        assert page.headers["etag"] != empty.headers["etag"]
        assert [m["role"] for m in page.json()["items"]] == ["user", "assistant"]
        cached = await client.get(url, headers={**user.headers, "If-None-Match": f'"x", {page.headers["etag"]}'})
        assert cached.status_code == 304
        stranger = await sign_up(client)
        hidden = await client.get(url, headers={**stranger.headers, "If-None-Match": page.headers["etag"]})
        assert hidden.status_code == 404


def test_etag_is_weak_and_content_bound() -> None:
    assert etag_of(b"a") != etag_of(b"b")
    assert etag_of(b"a") == etag_of(b"a")
    assert etag_of(b"a").startswith('W/"')
