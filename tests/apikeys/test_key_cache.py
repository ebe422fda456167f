"""The key cache in front of the database: hits cost no query, concurrent misses share one, unknown keys
are cached too, entries age out after the TTL (the cross-instance bound on revocation), and a cached key
counts as its owner for rate limiting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update

from chatstudio.apikeys.auth import ApiKeyAuthenticator
from chatstudio.apikeys.models import ApiKey
from chatstudio.apikeys.service import InvalidApiKey, hash_key
from chatstudio.db import utcnow
from tests.apikeys.support import Studio, bearer, create_key
from tests.chat.conftest import chat_settings
from tests.conftest import Backend, running_app, sign_up


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def key_queries(app: Any) -> Iterator[list[str]]:
    """The SELECTs that look keys up, as the database sees them."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "api_key" in statement:
            seen.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


async def test_hits_cost_no_query_and_misses_share_one(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    key = await create_key(client, user)
    keys = ApiKeyAuthenticator(app.state.sessionmaker, clock=Clock())
    with key_queries(app) as queries:
        found = await asyncio.gather(*(keys.authenticate(key) for _ in range(20)))
        assert len(queries) == 1
        assert {str(item.user.id) for item in found} == {user.id}
        assert found[0].key.scopes == frozenset({"chat"})
        await keys.authenticate(key)
        assert len(queries) == 1
        for _ in range(3):
            with pytest.raises(InvalidApiKey):
                await keys.authenticate("cs-unknown")
        assert len(queries) == 2


async def test_entries_age_out_so_other_instances_see_a_revocation(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    clock = Clock()
    other_instance = ApiKeyAuthenticator(app.state.sessionmaker, ttl=30, clock=clock)
    await other_instance.authenticate(key)
    async with app.state.sessionmaker() as session:  # revoked elsewhere: this instance's cache is not told
        await session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=utcnow()))
        await session.commit()
    clock.now += 29
    await other_instance.authenticate(key)  # still inside the TTL
    clock.now += 2
    with pytest.raises(InvalidApiKey):
        await other_instance.authenticate(key)


async def test_local_revocation_refuses_a_racing_lookup(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    keys = ApiKeyAuthenticator(app.state.sessionmaker, clock=Clock())
    keys.revoke(hash_key(key))  # as the revoking request does, before its transaction commits
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(key)  # the row still reads as live here
    assert keys.cached_user_id(key) is None


async def test_cached_user_id_only_for_accepted_keys(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    key = await create_key(client, user)
    clock = Clock()
    keys = ApiKeyAuthenticator(app.state.sessionmaker, ttl=30, clock=clock)
    assert keys.cached_user_id(key) is None
    assert keys.cached_user_id(user.access_token) is None
    await keys.authenticate(key)
    assert str(keys.cached_user_id(key)) == user.id
    clock.now += 31
    assert keys.cached_user_id(key) is None


@pytest.fixture
async def limited(backend: Backend, fake_upstream: str, tmp_path: Path) -> Any:
    settings = chat_settings(backend.url, fake_upstream, tmp_path, rate_limit_per_minute=4)
    async with running_app(settings, wipe=True) as (client, app):
        yield client, app


async def test_a_key_shares_its_owners_rate_limit(limited: Studio) -> None:
    client, _ = limited
    user = await sign_up(client)  # register and login are limited per IP, not per user
    key = await create_key(client, user)  # 1st request of the user
    assert (await client.get("/api/v1/conversations", headers=user.headers)).status_code == 200  # 2nd
    # A key not yet accepted by this instance is limited by IP; from then on it counts as its owner.
    assert (await client.get("/api/v1/conversations", headers=bearer(key))).status_code == 200
    assert (await client.get("/api/v1/conversations", headers=bearer(key))).status_code == 200  # 3rd
    assert (await client.get("/api/v1/conversations", headers=user.headers)).status_code == 200  # 4th
    limited_now = await client.get("/api/v1/conversations", headers=bearer(key))
    assert limited_now.status_code == 429
    assert (await client.get("/api/v1/conversations", headers=user.headers)).status_code == 429
