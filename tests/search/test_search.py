"""`GET /api/v1/search` on every backend: hits, highlights, order, pages, owners, hostile input."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from chatstudio.chat.models import Message
from chatstudio.db import utcnow
from tests.conftest import SignedIn, sign_up

SEARCH = "/api/v1/search"


async def conversation(client: httpx.AsyncClient, user: SignedIn, title: str = "Misc") -> str:
    response = await client.post("/api/v1/conversations", headers=user.headers, json={"title": title})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def add_messages(app: Any, user: SignedIn, conversation_id: str, *contents: str) -> list[str]:
    """Stored as a turn would store them (user, assistant, user ...), without running a model."""
    ids = []
    async with app.state.sessionmaker() as session:
        for index, content in enumerate(contents):
            message = Message(
                conversation_id=uuid.UUID(conversation_id),
                user_id=uuid.UUID(user.id),
                role="user" if index % 2 == 0 else "assistant",
                content=content,
                created_at=utcnow(),
            )
            session.add(message)
            await session.flush()
            ids.append(str(message.id))
        await session.commit()
    return ids


async def search(client: httpx.AsyncClient, user: SignedIn, q: str, **params: Any) -> dict[str, Any]:
    response = await client.get(SEARCH, headers=user.headers, params={"q": q, **params})
    assert response.status_code == 200, response.text
    return dict(response.json())


def marked(hit: dict[str, Any]) -> list[str]:
    return [hit["snippet"][start:end] for start, end in hit["highlights"]]


async def test_finds_messages_and_titles_with_highlights(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    trip = await conversation(client, alice, "Trip to Lisbon")
    question, answer = await add_messages(
        app, alice, trip, "Should we book the ferry early?", "Ferries to the coast leave hourly."
    )
    other = await conversation(client, alice, "Groceries")
    await add_messages(app, alice, other, "milk, eggs, bread")

    hits = (await search(client, alice, "ferr"))["items"]
    assert {hit["message_id"] for hit in hits} == {question, answer}
    for hit in hits:
        assert hit["conversation_id"] == trip
        assert hit["conversation_title"] == "Trip to Lisbon"
        assert hit["role"] in ("user", "assistant")
        assert hit["created_at"]
        assert [word.lower() for word in marked(hit)] in (["ferry"], ["ferries"])
    by_id = {hit["message_id"]: hit for hit in hits}
    assert by_id[question]["role"] == "user"
    assert by_id[answer]["role"] == "assistant"
    assert "ferry" in by_id[question]["snippet"]

    titles = (await search(client, alice, "lisbon"))["items"]
    assert len(titles) == 1
    assert titles[0]["message_id"] is None
    assert titles[0]["role"] is None
    assert titles[0]["conversation_id"] == trip
    assert titles[0]["snippet"] == "Trip to Lisbon"
    assert marked(titles[0]) == ["Lisbon"]


async def test_every_word_must_appear_as_a_word_prefix(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    cid = await conversation(client, alice)
    both, _only_one = await add_messages(app, alice, cid, "deployment of the parser", "deployment only")
    assert [h["message_id"] for h in (await search(client, alice, "deploy pars"))["items"]] == [both]
    assert len((await search(client, alice, "DEPLOYMENT"))["items"]) == 2
    # A term matches the start of a word, not its middle.
    assert (await search(client, alice, "ployment"))["items"] == []
    assert (await search(client, alice, "deploy absent"))["items"] == []


async def test_unicode_words_and_their_offsets(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    cid = await conversation(client, alice)
    await add_messages(app, alice, cid, "🙂 Le café était très bon à Zürich")
    [hit] = (await search(client, alice, "zürich"))["items"]
    assert marked(hit) == ["Zürich"]
    [hit] = (await search(client, alice, "CAFÉ"))["items"]
    assert marked(hit) == ["café"]


async def test_long_messages_give_a_snippet_around_the_match(
    client: httpx.AsyncClient, app: Any, alice: SignedIn
) -> None:
    cid = await conversation(client, alice)
    filler = " ".join(f"word{i}" for i in range(400))
    await add_messages(app, alice, cid, f"{filler} the needle is here {filler}")
    [hit] = (await search(client, alice, "needle"))["items"]
    assert len(hit["snippet"]) < 600
    assert marked(hit) == ["needle"]


async def test_relevance_ranks_the_denser_match_first_and_is_stable(
    client: httpx.AsyncClient, app: Any, alice: SignedIn
) -> None:
    cid = await conversation(client, alice)
    sparse, dense, _ = await add_messages(
        app,
        alice,
        cid,
        "a kettle among many other household things that fill this long and winding sentence",
        "kettle kettle kettle",
        "nothing to see",
    )
    first = (await search(client, alice, "kettle", sort="relevance"))["items"]
    assert [hit["message_id"] for hit in first] == [dense, sparse]
    again = (await search(client, alice, "kettle", sort="relevance"))["items"]
    assert again == first


async def test_relevance_scores_only_the_newest_matches(
    client: httpx.AsyncClient, app: Any, alice: SignedIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chatstudio.search.repository.RELEVANCE_WINDOW", 2)
    cid = await conversation(client, alice)
    _dense, older, newest = await add_messages(app, alice, cid, "kettle kettle kettle", "a kettle", "one kettle")
    hits = (await search(client, alice, "kettle", sort="relevance"))["items"]
    assert {hit["message_id"] for hit in hits} == {older, newest}


async def test_newest_first_by_default(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    cid = await conversation(client, alice, "Kettle reviews")
    ids = await add_messages(app, alice, cid, "kettle one", "kettle kettle kettle two", "kettle three")
    hits = (await search(client, alice, "kettle"))["items"]
    assert hits == (await search(client, alice, "kettle", sort="recent"))["items"]
    # The title hit carries the conversation's own time: it was created before the messages.
    assert [hit["message_id"] for hit in hits] == [*reversed(ids), None]


@pytest.mark.parametrize("sort", ["relevance", "recent"])
async def test_pages_cover_every_hit_once(client: httpx.AsyncClient, app: Any, alice: SignedIn, sort: str) -> None:
    cid = await conversation(client, alice, "paging")
    # Equal and different scores, so the keyset has ties to break.
    contents = [("paging " * (1 + i % 3)).strip() + f" item{i}" for i in range(23)]
    ids = await add_messages(app, alice, cid, *contents)
    seen: list[str | None] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5, "sort": sort}
        if cursor:
            params["cursor"] = cursor
        page = await search(client, alice, "paging", **params)
        assert len(page["items"]) <= 5
        seen.extend(hit["message_id"] for hit in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert sorted(seen, key=str) == sorted([*ids, None], key=str)  # 23 messages and the title
    whole = await search(client, alice, "paging", limit=100, sort=sort)
    assert [hit["message_id"] for hit in whole["items"]] == seen
    assert whole["next_cursor"] is None


async def test_another_users_messages_never_appear(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    bob = await sign_up(client, "bob@example.com")
    mine = await conversation(client, alice, "secret plans")
    theirs = await conversation(client, bob, "secret plans")
    [my_message] = await add_messages(app, alice, mine, "the secret is blue")
    await add_messages(app, bob, theirs, "the secret is red")

    alice_hits = (await search(client, alice, "secret", limit=100))["items"]
    assert {hit["conversation_id"] for hit in alice_hits} == {mine}
    assert {hit["message_id"] for hit in alice_hits} == {my_message, None}
    bob_hits = (await search(client, bob, "secret"))["items"]
    assert {hit["conversation_id"] for hit in bob_hits} == {theirs}
    assert all("blue" not in hit["snippet"] for hit in bob_hits)


@pytest.mark.parametrize("sort", ["relevance", "recent"])
async def test_searches_of_one_shape_share_only_the_statement(
    client: httpx.AsyncClient, app: Any, alice: SignedIn, sort: str
) -> None:
    """Statements are built once per shape (sort, page size, paged or not) and reused; each search
    still gets its own user, words and position."""
    bob = await sign_up(client, "bob@example.com")
    mine = await conversation(client, alice, "Notes")
    theirs = await conversation(client, bob, "Notes")
    [blue] = await add_messages(app, alice, mine, "the secret is blue")
    red, green = await add_messages(app, bob, theirs, "the secret is red", "a green secret garden")

    def ids(page: dict[str, Any]) -> list[str | None]:
        return [hit["message_id"] for hit in page["items"]]

    assert ids(await search(client, alice, "secret", sort=sort, limit=1)) == [blue]
    first = await search(client, bob, "secret", sort=sort, limit=1)
    second = await search(client, bob, "secret", sort=sort, limit=1, cursor=first["next_cursor"])
    assert sorted(ids(first) + ids(second)) == sorted([red, green])
    # A position is only a position: from another user's page on, alice still sees only her own.
    assert set(ids(await search(client, alice, "secret", sort=sort, limit=1, cursor=first["next_cursor"]))) <= {blue}
    assert ids(await search(client, bob, "garden", sort=sort, limit=1)) == [green]
    assert ids(await search(client, alice, "garden", sort=sort, limit=1)) == []
    assert ids(await search(client, alice, "blue", sort=sort, limit=1)) == [blue]


INJECTIONS = [
    '"',
    "'",
    "*",
    "-",
    "AND",
    "NOT",
    "(",
    '"unbalanced',
    "' OR 1=1 --",
    "'; DROP TABLE message; --",
    "\") OR message_fts MATCH 'x",
    "NEAR(a b, 2)",
    "a:* | !b & c",
    "%_%",
    "\\",
    "content:secret",
    "+secret -secret ~secret <secret >secret",
    "secret*",
    '"secret"',
    "@@ -- ;",
    "\ue000secret\ue001",
]


@pytest.mark.parametrize("q", INJECTIONS)
async def test_query_syntax_is_never_an_error(client: httpx.AsyncClient, app: Any, alice: SignedIn, q: str) -> None:
    cid = await conversation(client, alice)
    [secret] = await add_messages(app, alice, cid, "my secret recipe")
    response = await client.get(SEARCH, headers=alice.headers, params={"q": q})
    assert response.status_code == 200, response.text
    hits = response.json()["items"]
    # Either nothing, or plain word matches of the words it contains.
    assert [hit["message_id"] for hit in hits] in ([], [secret])
    if hits:
        assert marked(hits[0]) == ["secret"]
    plain_words = [word for word in q.replace("\ue000", " ").replace("\ue001", " ").split() if word.isalnum()]
    if "secret" in q and len(plain_words) <= 1 and "content" not in q:
        assert [hit["message_id"] for hit in hits] == [secret]


async def test_a_nul_character_is_a_clear_4xx(client: httpx.AsyncClient, alice: SignedIn) -> None:
    response = await client.get(SEARCH, headers=alice.headers, params={"q": "secret\x00"})
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["code"]


async def test_deleted_conversations_disappear(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    gone = await conversation(client, alice, "obsolete kettle")
    await add_messages(app, alice, gone, "kettle note")
    kept = await conversation(client, alice)
    [kept_message] = await add_messages(app, alice, kept, "kettle stays")
    assert len((await search(client, alice, "kettle"))["items"]) == 3

    assert (await client.delete(f"/api/v1/conversations/{gone}", headers=alice.headers)).status_code == 204
    hits = (await search(client, alice, "kettle"))["items"]
    assert [hit["message_id"] for hit in hits] == [kept_message]


async def test_edited_text_is_found_by_its_new_words(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    # A streamed reply starts empty and gets its text in one final update.
    cid = await conversation(client, alice)
    [reply] = await add_messages(app, alice, cid, "placeholder")
    async with app.state.sessionmaker() as session:
        await session.execute(
            update(Message)
            .where(Message.id == uuid.UUID(reply))
            .values(content="a finished answer", updated_at=utcnow() + timedelta(seconds=1))
        )
        await session.commit()
    assert (await search(client, alice, "placeholder"))["items"] == []
    assert [hit["message_id"] for hit in (await search(client, alice, "finished"))["items"]] == [reply]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "validation_error"),
        ({"q": ""}, "validation_error"),
        ({"q": "x" * 201}, "validation_error"),
        ({"q": "x", "limit": 0}, "validation_error"),
        ({"q": "x", "limit": 101}, "validation_error"),
        ({"q": "x", "sort": "best"}, "validation_error"),
        ({"q": "x", "cursor": "not-a-cursor"}, "invalid_cursor"),
    ],
)
async def test_bad_parameters_are_a_clear_4xx(
    client: httpx.AsyncClient, alice: SignedIn, params: dict[str, Any], code: str
) -> None:
    response = await client.get(SEARCH, headers=alice.headers, params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


async def test_a_cursor_of_one_order_is_refused_by_the_other(
    client: httpx.AsyncClient, app: Any, alice: SignedIn
) -> None:
    cid = await conversation(client, alice)
    await add_messages(app, alice, cid, "kettle a", "kettle b")
    page = await search(client, alice, "kettle", limit=1)
    assert page["next_cursor"]
    response = await client.get(
        SEARCH, headers=alice.headers, params={"q": "kettle", "cursor": page["next_cursor"], "sort": "relevance"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_cursor"


async def test_requires_authentication(client: httpx.AsyncClient) -> None:
    response = await client.get(SEARCH, params={"q": "x"})
    assert response.status_code == 401
