"""Hostile strings through every string field and query parameter: stored and returned verbatim as
JSON data, no other row touched, nothing leaked, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import TEST_SECRET_KEY, SignedIn, sign_up

PAYLOADS = [
    "<script>alert(document.cookie)</script>",
    '<img src=x onerror="fetch(`/steal?c=${document.cookie}`)">',
    '<a href="javascript:alert(1)">click</a>',
    '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><circle r="1"/></svg>',
    "${SECRET_KEY}",
    "{{config}} {{ settings.secret_key }} {% debug %}",
    "'; DROP TABLE user_account; --",
    '" OR 1=1 --',
    "1; UPDATE user_account SET role='admin' WHERE 1=1; --",
    "%' UNION SELECT password_hash FROM user_account --",
    "\\x00\\u0000 null-ish \u202e rtl",
    "🚀 emoji ✓ ünïcödé",
]


def _leaks(body: str) -> bool:
    return TEST_SECRET_KEY in body or "argon2" in body or "Traceback" in body


async def _row_counts(app: Any) -> dict[str, int]:
    async with app.state.sessionmaker() as session:
        counts = {}
        for table in ("user_account", "conversation", "message"):
            counts[table] = int((await session.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar() or 0)
        roles = (await session.execute(text("SELECT role FROM user_account"))).scalars().all()
    counts["admins"] = sum(1 for r in roles if r == "admin")
    return counts


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_fields_store_hostile_text_verbatim(
    client: httpx.AsyncClient, app: Any, alice: SignedIn, bob: SignedIn, payload: str
) -> None:
    bob_conversation = (await client.post("/api/v1/conversations", headers=bob.headers, json={"title": "bob"})).json()
    before = await _row_counts(app)

    # profile name
    me = await client.patch("/api/v1/users/me", headers=alice.headers, json={"name": payload})
    assert me.status_code == 200
    assert me.json()["name"] == payload.strip()
    assert me.headers["content-type"].startswith("application/json")

    # conversation title and system prompt
    created = await client.post(
        "/api/v1/conversations", headers=alice.headers, json={"title": payload, "system_prompt": payload}
    )
    assert created.status_code == 201
    conversation = created.json()
    assert conversation["title"] == payload.strip()
    assert conversation["system_prompt"] == payload
    fetched = (await client.get(f"/api/v1/conversations/{conversation['id']}", headers=alice.headers)).json()
    assert (fetched["title"], fetched["system_prompt"]) == (payload.strip(), payload)
    renamed = await client.patch(
        f"/api/v1/conversations/{conversation['id']}", headers=alice.headers, json={"title": payload + " 2"}
    )
    assert renamed.json()["title"] == (payload + " 2").strip()

    # query parameters
    for params in ({"q": payload}, {"q": payload, "limit": 5}):
        listing = await client.get("/api/v1/conversations", headers=alice.headers, params=params)
        assert listing.status_code == 200
        assert all(c["id"] != bob_conversation["id"] for c in listing.json()["items"])
    cursor = await client.get("/api/v1/conversations", headers=alice.headers, params={"cursor": payload})
    assert cursor.status_code == 422

    # a field whose pattern refuses it, refuses it cleanly
    model = await client.post("/api/v1/conversations", headers=alice.headers, json={"model": payload})
    assert model.status_code == 422

    after = await _row_counts(app)
    assert after == {**before, "conversation": before["conversation"] + 1}
    assert after["admins"] == 0
    # bob's data is untouched
    still = await client.get(f"/api/v1/conversations/{bob_conversation['id']}", headers=bob.headers)
    assert still.json()["title"] == "bob"
    for response in (me, created, renamed, model, cursor):
        assert not _leaks(response.text)


@pytest.mark.parametrize("payload", PAYLOADS[:4] + PAYLOADS[6:8])
async def test_hostile_registration(client: httpx.AsyncClient, app: Any, payload: str) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "mallory@example.com", "password": "plenty-Long-pass-42", "name": payload},
    )
    assert response.status_code == 201
    assert response.json()["name"] == payload.strip()
    hostile_email = await client.post(
        "/api/v1/auth/register", json={"email": payload, "password": "plenty-Long-pass-42"}
    )
    assert hostile_email.status_code == 422
    login = await client.post("/api/v1/auth/login", json={"email": payload, "password": payload})
    assert login.status_code in (401, 422)
    assert not _leaks(login.text)
    assert (await _row_counts(app))["user_account"] == 1


async def test_message_content_round_trips_verbatim(client: httpx.AsyncClient, app: Any) -> None:
    """Chat content goes to the model as data and comes back as data (the model here is the fake)."""
    from chatstudio.chat.models import Message, MessageRole

    user = await sign_up(client)
    conversation = (await client.post("/api/v1/conversations", headers=user.headers, json={})).json()
    import uuid

    async with app.state.sessionmaker() as session:
        for payload in PAYLOADS:
            session.add(
                Message(
                    conversation_id=uuid.UUID(conversation["id"]),
                    user_id=uuid.UUID(user.id),
                    role=MessageRole.USER,
                    content=payload,
                )
            )
            await session.flush()
        await session.commit()
    page = await client.get(
        f"/api/v1/conversations/{conversation['id']}/messages", headers=user.headers, params={"limit": 100}
    )
    assert [m["content"] for m in page.json()["items"]] == PAYLOADS
    assert page.headers["content-type"] == "application/json"
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_nul_characters_are_refused_not_500(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    before = await _row_counts(app)
    for body in ({"title": "a\u0000b"}, {"system_prompt": "\u0000"}, {"params": {"stop": ["\u0000"]}}):
        response = await client.post("/api/v1/conversations", headers=alice.headers, json=body)
        assert response.status_code == 422, response.text
    for params in ({"q": "a\u0000b"}, {"cursor": "\u0000"}):
        response = await client.get("/api/v1/conversations", headers=alice.headers, params=params)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_request"
    register = await client.post(
        "/api/v1/auth/register", json={"email": "n@example.com", "password": "long-Pass\u000012"}
    )
    assert register.status_code == 422
    assert await _row_counts(app) == before
