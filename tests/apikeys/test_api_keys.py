"""API keys: shown once, stored as a hash, listed without secrets, revoked at once, and limited to their
scopes; never a way into key management, the password or administration."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from chatstudio.apikeys.models import ApiKey
from chatstudio.apikeys.service import hash_key
from chatstudio.users.models import User
from tests.apikeys.support import Studio, bearer, create_key
from tests.conftest import STRONG_PASSWORD, sign_up


async def stored_keys(app: Any) -> list[ApiKey]:
    async with app.state.sessionmaker() as session:
        return list((await session.scalars(select(ApiKey))).all())


async def test_a_key_is_shown_once_and_stored_only_as_a_hash(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    response = await client.post(
        "/api/v1/api-keys",
        headers=user.headers,
        json={"name": " CI bot ", "expires_at": expires.isoformat(), "scopes": ["read", "chat"]},
    )
    assert response.status_code == 201
    created = response.json()
    key = created["key"]
    assert key.startswith("cs-")
    assert len(key) > 40
    assert created["prefix"] == key[:11]
    assert created["name"] == "CI bot"
    assert created["scopes"] == ["chat", "read"]
    assert datetime.fromisoformat(created["expires_at"]) == expires
    assert created["last_used_at"] is None

    [row] = await stored_keys(app)
    assert row.key_hash == hash_key(key)
    assert key not in {row.key_hash, row.prefix, row.name, row.scopes}

    listed = (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"]
    assert len(listed) == 1
    assert set(listed[0]) == {"id", "name", "prefix", "scopes", "created_at", "last_used_at", "expires_at"}
    assert key not in str(listed)
    assert listed[0]["id"] == created["id"]


async def test_default_scope_is_chat_and_scopes_are_enforced(studio: Studio) -> None:
    client, _ = studio
    user = await sign_up(client)
    chat_key = await create_key(client, user)
    read_key = await create_key(client, user, scopes=["read"])
    both = await create_key(client, user, scopes=[])  # empty: chat only

    # chat: the chat routes, any method; nothing else
    created = await client.post("/api/v1/conversations", headers=bearer(chat_key), json={"title": "via key"})
    assert created.status_code == 201
    assert (await client.get("/api/v1/conversations", headers=bearer(chat_key))).status_code == 200
    assert (await client.get("/api/v1/models", headers=bearer(chat_key))).status_code == 200
    assert (await client.get("/api/v1/conversations", headers=bearer(both))).status_code == 200
    refused = await client.get("/api/v1/users/me", headers=bearer(chat_key))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"

    # read: GETs only
    me = await client.get("/api/v1/users/me", headers=bearer(read_key))
    assert me.status_code == 200
    assert me.json()["id"] == user.id
    assert (await client.get("/api/v1/conversations", headers=bearer(read_key))).status_code == 200
    writing = await client.post("/api/v1/conversations", headers=bearer(read_key), json={})
    assert writing.status_code == 403
    assert (await client.patch("/api/v1/users/me", headers=bearer(read_key), json={"name": "x"})).status_code == 403


async def test_keys_never_reach_key_management_password_or_admin(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    key = await create_key(client, user, scopes=["chat", "read"])
    async with app.state.sessionmaker() as session:
        await session.execute(update(User).where(User.id == uuid.UUID(user.id)).values(role="admin"))
        await session.commit()
    attempts = [
        client.get("/api/v1/api-keys", headers=bearer(key)),
        client.post("/api/v1/api-keys", headers=bearer(key), json={"name": "more"}),
        client.post(
            "/api/v1/users/me/password",
            headers=bearer(key),
            json={"current_password": STRONG_PASSWORD, "new_password": "another-Strong-pass-42"},
        ),
        client.post("/api/v1/auth/logout", headers=bearer(key)),
        client.get("/api/v1/admin/usage", headers=bearer(key)),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code in (401, 403), response.text
    assert (await client.get("/api/v1/admin/usage", headers=user.headers)).status_code == 200
    assert len(await stored_keys(app)) == 1


async def test_revocation_is_immediate_even_for_a_cached_key(studio: Studio) -> None:
    client, _ = studio
    user = await sign_up(client)
    key = await create_key(client, user)
    assert (await client.get("/api/v1/conversations", headers=bearer(key))).status_code == 200  # now cached
    key_id = (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"][0]["id"]
    assert (await client.delete(f"/api/v1/api-keys/{key_id}", headers=user.headers)).status_code == 204
    response = await client.get("/api/v1/conversations", headers=bearer(key))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"] == []
    again = await client.delete(f"/api/v1/api-keys/{key_id}", headers=user.headers)
    assert again.status_code == 404


async def test_another_users_key_is_not_found(studio: Studio) -> None:
    client, _ = studio
    owner, stranger = await sign_up(client), await sign_up(client)
    key = await create_key(client, owner)
    key_id = (await client.get("/api/v1/api-keys", headers=owner.headers)).json()["items"][0]["id"]
    response = await client.delete(f"/api/v1/api-keys/{key_id}", headers=stranger.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "api_key_not_found"
    assert (await client.get("/api/v1/api-keys", headers=stranger.headers)).json()["items"] == []
    assert (await client.get("/api/v1/conversations", headers=bearer(key))).status_code == 200
    missing = await client.delete(f"/api/v1/api-keys/{uuid.uuid4()}", headers=owner.headers)
    assert missing.status_code == 404


async def test_expired_revoked_unknown_and_inactive_keys_fail(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    expiring = await create_key(client, user, expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    async with app.state.sessionmaker() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(expiring)).values(expires_at=past))
        await session.commit()
    for key in (expiring, "cs-" + "x" * 43, "cs-"):
        response = await client.get("/api/v1/conversations", headers=bearer(key))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"

    other = await sign_up(client)
    inactive_key = await create_key(client, other)
    async with app.state.sessionmaker() as session:
        await session.execute(update(User).where(User.id == uuid.UUID(other.id)).values(is_active=False))
        await session.commit()
    assert (await client.get("/api/v1/conversations", headers=bearer(inactive_key))).status_code == 401


async def test_use_is_recorded_without_a_write_per_request(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    key = await create_key(client, user)
    assert (await client.get("/api/v1/conversations", headers=bearer(key))).status_code == 200
    [row] = await stored_keys(app)
    assert row.last_used_at is not None
    first_use = row.last_used_at
    for _ in range(3):
        assert (await client.get("/api/v1/conversations", headers=bearer(key))).status_code == 200
    [row] = await stored_keys(app)
    assert row.last_used_at == first_use  # served from the cache: no touch per request
    listed = (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"][0]
    assert datetime.fromisoformat(listed["last_used_at"]) == first_use


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": "k", "scopes": ["admin"]},
        {"name": "k", "scopes": ["chat", "chat"]},
        {"name": "k", "expires_at": "2030-01-01T00:00:00"},  # no time zone
        {"name": "k", "expires_at": "2020-01-01T00:00:00Z"},  # in the past
        {"name": "k", "expires_at": "soon"},
        {"name": "k", "user_id": str(uuid.uuid4())},
    ],
)
async def test_bad_input_is_refused_and_stores_nothing(studio: Studio, body: dict[str, Any]) -> None:
    client, app = studio
    user = await sign_up(client)
    response = await client.post("/api/v1/api-keys", headers=user.headers, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in ("validation_error", "invalid_input")
    assert await stored_keys(app) == []


async def test_key_routes_need_a_signed_in_user(studio: Studio) -> None:
    client, _ = studio
    assert (await client.get("/api/v1/api-keys")).status_code == 401
    assert (await client.post("/api/v1/api-keys", json={"name": "x"})).status_code == 401
