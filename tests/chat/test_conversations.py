from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from chatstudio.chat.models import Conversation, Message, MessageRole
from chatstudio.pagination import encode_cursor
from tests.conftest import SignedIn

BASE = "/api/v1/conversations"


async def create(client: httpx.AsyncClient, user: SignedIn, **body: Any) -> dict[str, Any]:
    response = await client.post(BASE, headers=user.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_create_with_defaults(client: httpx.AsyncClient, alice: SignedIn) -> None:
    conversation = await create(client, alice)
    assert conversation["title"] == "New conversation"
    assert conversation["model"] is None
    assert conversation["params"] == {}
    assert conversation["pinned"] is False
    assert conversation["archived"] is False
    assert conversation["created_at"].endswith("Z") or "+00:00" in conversation["created_at"]


async def test_create_with_everything(client: httpx.AsyncClient, alice: SignedIn) -> None:
    conversation = await create(
        client,
        alice,
        title="Trip plans",
        model="openai/gpt-4o",
        system_prompt="You are terse.",
        params={"temperature": 0.2, "max_tokens": 300},
    )
    fetched = (await client.get(f"{BASE}/{conversation['id']}", headers=alice.headers)).json()
    assert fetched["title"] == "Trip plans"
    assert fetched["model"] == "openai/gpt-4o"
    assert fetched["system_prompt"] == "You are terse."
    assert fetched["params"] == {"temperature": 0.2, "max_tokens": 300}


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "x" * 301},
        {"params": {"temperature": 3}},
        {"params": {"top_p": 0}},
        {"params": {"max_tokens": 0}},
        {"params": {"unknown": 1}},
        {"model": "has spaces/x"},
        {"user_id": str(uuid.uuid4())},
        {"system_prompt": "x" * 32_001},
    ],
)
async def test_create_rejects_bad_input(client: httpx.AsyncClient, alice: SignedIn, body: dict[str, Any]) -> None:
    response = await client.post(BASE, headers=alice.headers, json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    listing = (await client.get(BASE, headers=alice.headers)).json()
    assert listing["items"] == []


async def test_requires_authentication(client: httpx.AsyncClient) -> None:
    assert (await client.get(BASE)).status_code == 401
    assert (await client.post(BASE, json={})).status_code == 401


async def _set_activity(app: Any, conversation_id: str, at: datetime) -> None:
    async with app.state.sessionmaker() as session:
        row = await session.get(Conversation, uuid.UUID(conversation_id))
        assert row is not None
        row.last_activity_at = at
        await session.commit()


async def test_list_is_newest_first_with_keyset_pages(client: httpx.AsyncClient, alice: SignedIn, app: Any) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for i in range(7):
        conversation = await create(client, alice, title=f"c{i}")
        # Two share a timestamp, so the id tie-breaker is exercised.
        await _set_activity(app, conversation["id"], base + timedelta(minutes=min(i, 5)))
        ids.append(conversation["id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(BASE, headers=alice.headers, params=params)).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert seen[:2] == sorted(ids[5:7], reverse=True)  # same time: larger id first
    assert seen[2:] == list(reversed(ids[:5]))


async def test_list_limits(client: httpx.AsyncClient, alice: SignedIn) -> None:
    assert (await client.get(BASE, headers=alice.headers, params={"limit": 101})).status_code == 422
    assert (await client.get(BASE, headers=alice.headers, params={"limit": 0})).status_code == 422
    assert (await client.get(BASE, headers=alice.headers, params={"limit": 100})).status_code == 200


@pytest.mark.parametrize("cursor", ["garbage", "W10", "WyJ4IiwieSJd", "eyJhIjoxfQ"])
async def test_bad_cursor_is_422(client: httpx.AsyncClient, alice: SignedIn, cursor: str) -> None:
    response = await client.get(BASE, headers=alice.headers, params={"cursor": cursor})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_cursor"


async def test_search_titles(client: httpx.AsyncClient, alice: SignedIn, bob: SignedIn) -> None:
    await create(client, alice, title="Quarterly Report draft")
    await create(client, alice, title="Holiday ideas")
    await create(client, alice, title="100% sure_thing")
    await create(client, bob, title="Bob's report")
    found = (await client.get(BASE, headers=alice.headers, params={"q": "report"})).json()["items"]
    assert [c["title"] for c in found] == ["Quarterly Report draft"]
    # LIKE wildcards in the query are literal characters
    assert [c["title"] for c in (await client.get(BASE, headers=alice.headers, params={"q": "%"})).json()["items"]] == [
        "100% sure_thing"
    ]
    assert (await client.get(BASE, headers=alice.headers, params={"q": "_"})).json()["items"][0]["title"] == (
        "100% sure_thing"
    )
    assert len((await client.get(BASE, headers=alice.headers, params={"q": "o_i"})).json()["items"]) == 0


async def test_patch_updates_fields(client: httpx.AsyncClient, alice: SignedIn) -> None:
    conversation = await create(client, alice, title="Old", model="openai/gpt-4o", system_prompt="be nice")
    response = await client.patch(
        f"{BASE}/{conversation['id']}",
        headers=alice.headers,
        json={"title": "New", "pinned": True, "system_prompt": None, "params": {"temperature": 1}},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["title"] == "New"
    assert body["pinned"] is True
    assert body["system_prompt"] is None
    assert body["model"] == "openai/gpt-4o"  # untouched
    assert body["params"] == {"temperature": 1}


async def test_archived_and_pinned_filters(client: httpx.AsyncClient, alice: SignedIn) -> None:
    kept = await create(client, alice, title="kept")
    archived = await create(client, alice, title="archived")
    pinned = await create(client, alice, title="pinned")
    await client.patch(f"{BASE}/{archived['id']}", headers=alice.headers, json={"archived": True})
    await client.patch(f"{BASE}/{pinned['id']}", headers=alice.headers, json={"pinned": True})
    default = {c["id"] for c in (await client.get(BASE, headers=alice.headers)).json()["items"]}
    assert default == {kept["id"], pinned["id"]}
    only_archived = (await client.get(BASE, headers=alice.headers, params={"archived": "true"})).json()["items"]
    assert [c["id"] for c in only_archived] == [archived["id"]]
    only_pinned = (await client.get(BASE, headers=alice.headers, params={"pinned": "true"})).json()["items"]
    assert [c["id"] for c in only_pinned] == [pinned["id"]]


async def test_patch_rejects_unknown_and_null_title(client: httpx.AsyncClient, alice: SignedIn) -> None:
    conversation = await create(client, alice, title="Keep me")
    bad = await client.patch(f"{BASE}/{conversation['id']}", headers=alice.headers, json={"user_id": alice.id})
    assert bad.status_code == 422
    null_title = await client.patch(f"{BASE}/{conversation['id']}", headers=alice.headers, json={"title": None})
    assert null_title.status_code == 200
    assert null_title.json()["title"] == "Keep me"


async def test_delete_removes_conversation_and_messages(client: httpx.AsyncClient, alice: SignedIn, app: Any) -> None:
    conversation = await create(client, alice)
    await _add_messages(app, conversation["id"], alice.id, 40)
    response = await client.delete(f"{BASE}/{conversation['id']}", headers=alice.headers)
    assert response.status_code == 204
    assert (await client.get(f"{BASE}/{conversation['id']}", headers=alice.headers)).status_code == 404
    async with app.state.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(Message))
    assert count == 0
    assert (await client.delete(f"{BASE}/{conversation['id']}", headers=alice.headers)).status_code == 404


async def _add_messages(app: Any, conversation_id: str, user_id: str, count: int) -> list[str]:
    """A chain deeper than InnoDB's 15-level cascade limit, alternating roles like a real chat."""
    ids: list[str] = []
    parent: uuid.UUID | None = None
    async with app.state.sessionmaker() as session:
        for i in range(count):
            message = Message(
                conversation_id=uuid.UUID(conversation_id),
                user_id=uuid.UUID(user_id),
                parent_id=parent,
                role=MessageRole.USER if i % 2 == 0 else MessageRole.ASSISTANT,
                content=f"message {i} ✓ 🚀",
            )
            session.add(message)
            await session.flush()
            parent = message.id
            ids.append(str(message.id))
        await session.commit()
    return ids


async def test_messages_are_paginated_oldest_first(client: httpx.AsyncClient, alice: SignedIn, app: Any) -> None:
    conversation = await create(client, alice)
    ids = await _add_messages(app, conversation["id"], alice.id, 25)
    url = f"{BASE}/{conversation['id']}/messages"
    first = (await client.get(url, headers=alice.headers, params={"limit": 10})).json()
    second = (await client.get(url, headers=alice.headers, params={"limit": 10, "cursor": first["next_cursor"]})).json()
    third = (await client.get(url, headers=alice.headers, params={"limit": 10, "cursor": second["next_cursor"]})).json()
    got = [m["id"] for m in first["items"] + second["items"] + third["items"]]
    assert got == ids
    assert third["next_cursor"] is None
    assert first["items"][0]["content"] == "message 0 ✓ 🚀"
    assert first["items"][1]["parent_id"] == first["items"][0]["id"]


async def test_another_users_conversation_is_404_for_every_verb(
    client: httpx.AsyncClient, alice: SignedIn, bob: SignedIn, app: Any
) -> None:
    conversation = await create(client, alice, title="Private")
    await _add_messages(app, conversation["id"], alice.id, 2)
    missing = str(uuid.uuid4())
    for target in (conversation["id"], missing):
        url = f"{BASE}/{target}"
        responses = [
            await client.get(url, headers=bob.headers),
            await client.patch(url, headers=bob.headers, json={"title": "pwned"}),
            await client.delete(url, headers=bob.headers),
            await client.get(f"{url}/messages", headers=bob.headers),
        ]
        for response in responses:
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "conversation_not_found"
    # a stranger's 404 and a missing id's 404 carry the same body
    stranger = await client.get(f"{BASE}/{conversation['id']}", headers=bob.headers)
    absent = await client.get(f"{BASE}/{missing}", headers=bob.headers)
    assert {k: v for k, v in stranger.json()["error"].items() if k != "request_id"} == {
        k: v for k, v in absent.json()["error"].items() if k != "request_id"
    }
    # nothing changed for the owner
    owner_view = (await client.get(f"{BASE}/{conversation['id']}", headers=alice.headers)).json()
    assert owner_view["title"] == "Private"
    assert len((await client.get(f"{BASE}/{conversation['id']}/messages", headers=alice.headers)).json()["items"]) == 2
    assert (await client.get(BASE, headers=bob.headers)).json()["items"] == []


async def test_message_pages_check_the_owner_in_the_page_query(
    client: httpx.AsyncClient, alice: SignedIn, bob: SignedIn, app: Any
) -> None:
    """A page with messages is one statement (filtered by owner); only an empty page asks whether the
    conversation exists, so an empty conversation and a page past the end are 200, a stranger's 404."""
    from sqlalchemy import event

    full = await create(client, alice)
    await _add_messages(app, full["id"], alice.id, 3)
    empty = await create(client, alice)
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM message" in statement or "FROM conversation" in statement:
            statements.append(statement)

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", capture)
    try:
        page = await client.get(f"{BASE}/{full['id']}/messages", params={"limit": 2}, headers=alice.headers)
        page_statements = list(statements)
        statements.clear()
        last = await client.get(
            f"{BASE}/{full['id']}/messages", params={"cursor": page.json()["next_cursor"]}, headers=alice.headers
        )
        past_end = await client.get(
            f"{BASE}/{full['id']}/messages",
            params={"cursor": encode_cursor(uuid.UUID(last.json()["items"][-1]["id"]))},
            headers=alice.headers,
        )
        past_end_statements = list(statements)
    finally:
        event.remove(app.state.engine.sync_engine, "before_cursor_execute", capture)
    assert page.status_code == 200
    assert len(page.json()["items"]) == 2
    assert len(page_statements) == 1
    assert "FROM message" in page_statements[0]
    assert [m["content"] for m in last.json()["items"]] == ["message 2 ✓ 🚀"]
    assert past_end.status_code == 200
    assert past_end.json() == {"items": [], "next_cursor": None}
    assert any("FROM conversation" in statement for statement in past_end_statements)
    listed = await client.get(f"{BASE}/{empty['id']}/messages", headers=alice.headers)
    assert listed.status_code == 200
    assert listed.json()["items"] == []
    for target in (full["id"], empty["id"]):
        refused = await client.get(f"{BASE}/{target}/messages", headers=bob.headers)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "conversation_not_found"


async def test_list_pages_of_one_shape_keep_each_users_own(
    client: httpx.AsyncClient, alice: SignedIn, bob: SignedIn
) -> None:
    """List statements are built once per shape (page size, filters, paged or not) and reused; each
    request still gets its own user, title filter and position."""
    for title in ("alpha report", "alpha notes"):
        await create(client, alice, title=title)
    await create(client, bob, title="bob report")

    async def titles(user: SignedIn, **params: Any) -> tuple[list[str], str | None]:
        page = (await client.get(BASE, headers=user.headers, params={"limit": 1, **params})).json()
        return [item["title"] for item in page["items"]], page["next_cursor"]

    first, cursor = await titles(alice)
    second, _ = await titles(alice, cursor=cursor)
    assert sorted(first + second) == ["alpha notes", "alpha report"]
    assert await titles(bob) == (["bob report"], None)
    assert (await titles(bob, cursor=cursor))[0] == []  # a position, not a permission
    assert (await titles(alice, q="report"))[0] == ["alpha report"]
    assert (await titles(bob, q="report"))[0] == ["bob report"]
    assert (await titles(alice, q="notes"))[0] == ["alpha notes"]


async def test_malformed_id_is_422(client: httpx.AsyncClient, alice: SignedIn) -> None:
    response = await client.get(f"{BASE}/not-a-uuid", headers=alice.headers)
    assert response.status_code == 422


async def test_list_query_uses_an_index(app: Any, backend: Any) -> None:
    """The list screen's query must be served by ix_conversation_user_list, not a table scan."""
    from sqlalchemy import text

    if backend.name != "sqlite":
        pytest.skip("plan inspection is checked on SQLite; PostgreSQL and MySQL pick plans by table size")
    async with app.state.engine.connect() as conn:
        plan = (
            await conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT * FROM conversation WHERE user_id = :u AND archived = 0 "
                    "ORDER BY last_activity_at DESC, id DESC LIMIT 50"
                ),
                {"u": uuid.uuid4().hex},
            )
        ).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_conversation_user_list" in details
    assert "TEMP B-TREE" not in details


async def test_a_later_page_seeks_in_the_index(
    app: Any, backend: Any, client: httpx.AsyncClient, alice: SignedIn
) -> None:
    """The keyset of page N must be a range the index seeks to, not a filter over pages 1..N-1."""
    from sqlalchemy import event

    if backend.name != "sqlite":
        pytest.skip("plan inspection is checked on SQLite; PostgreSQL and MySQL pick plans by table size")
    for index in range(3):
        await create(client, alice, title=f"c{index}")
    first = (await client.get(BASE, params={"limit": 1}, headers=alice.headers)).json()
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().startswith("SELECT") and "FROM conversation" in statement:
            captured.append((statement, parameters))

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", capture)
    try:
        page = await client.get(BASE, params={"limit": 1, "cursor": first["next_cursor"]}, headers=alice.headers)
    finally:
        event.remove(app.state.engine.sync_engine, "before_cursor_execute", capture)
    assert page.status_code == 200
    assert [item["title"] for item in page.json()["items"]] == ["c1"]
    statement, parameters = captured[-1]
    async with app.state.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        cursor = await raw.driver_connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        plan = " ".join(str(row[-1]) for row in await cursor.fetchall())
    assert "ix_conversation_user_list" in plan
    assert "last_activity_at<" in plan.replace(" ", "")
