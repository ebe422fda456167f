"""PostgreSQL plans each search for its own words, and the settings that make it so stay in the
search's transaction: the pool's other statements keep the server's defaults. The relevance window
read from the recent range when it holds the whole window, from everything when not."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from chatstudio.search import pg_terms, repository
from chatstudio.search.schemas import Sort
from tests.conftest import SignedIn
from tests.search.test_search import add_messages, conversation, search

SETTINGS = text("SELECT current_setting('plan_cache_mode'), current_setting('random_page_cost')")


@pytest.fixture
async def kettles(client: httpx.AsyncClient, app: Any, alice: SignedIn, backend: Any) -> uuid.UUID:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's planner settings")
    cid = await conversation(client, alice, "Kitchen")
    await add_messages(app, alice, cid, "a kettle", "kettle kettle", "no match here")
    return uuid.UUID(alice.id)


@pytest.mark.parametrize("sort", [Sort.RELEVANCE, Sort.RECENT])
async def test_a_search_plans_for_its_words_inside_its_transaction_only(
    app: Any, kettles: uuid.UUID, sort: Sort
) -> None:
    async with app.state.sessionmaker() as session:
        before = (await session.execute(SETTINGS)).one()
        hits = await repository.search(session, kettles, ["kettle"], limit=5, sort=sort)
        during = (await session.execute(SETTINGS)).one()
        await session.commit()
        after = (await session.execute(SETTINGS)).one()
    assert len(hits) == 2
    assert tuple(before) == ("auto", "4")
    assert tuple(during) == ("force_custom_plan", "1.1")
    assert tuple(after) == tuple(before)


async def test_a_page_cost_the_operator_chose_is_kept(app: Any, kettles: uuid.UUID) -> None:
    async with app.state.sessionmaker() as session:
        await session.execute(text("SET random_page_cost = 2.5"))
        await repository.search(session, kettles, ["kettle"], limit=5, sort=Sort.RELEVANCE)
        during = (await session.execute(SETTINGS)).one()
        await session.execute(text("RESET random_page_cost"))
        await session.commit()
    assert tuple(during) == ("force_custom_plan", "2.5")


async def relevance_with_statements(
    client: httpx.AsyncClient, app: Any, user: SignedIn, q: str, page_size: int = 100
) -> tuple[list[str | None], list[str]]:
    """Every relevance hit for `q`, page after page, and the statements that found them."""
    async with app.state.engine.begin() as conn:
        await conn.execute(text("ANALYZE message"))
    pg_terms.forget()
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", capture)
    hits: list[str | None] = []
    try:
        cursor = None
        while True:
            params: dict[str, Any] = {"sort": "relevance", "limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = await search(client, user, q, **params)
            hits += [hit["message_id"] for hit in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return hits, statements
    finally:
        event.remove(app.state.engine.sync_engine, "before_cursor_execute", capture)
        pg_terms.forget()


@pytest.mark.parametrize("matches_at", ["spread", "oldest only"])
async def test_the_relevance_window_is_the_newest_matches_whether_or_not_the_recent_range_holds_them(
    client: httpx.AsyncClient, app: Any, alice: SignedIn, backend: Any, monkeypatch: pytest.MonkeyPatch, matches_at: str
) -> None:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's statistics")
    monkeypatch.setattr("chatstudio.search.repository.RELEVANCE_WINDOW", 3)
    monkeypatch.setattr("chatstudio.search.pg_terms.RECENT_WALK_ROWS", 0)  # 3 of 200 is a short walk
    cid = await conversation(client, alice)
    # 200 messages, 40 with the word (a share of 0.2): twice the 3 wanted needs 15% of them, so the
    # bound falls about 30 messages back. Spread, the range holds 6 matches; at the oldest, none.
    contents = [
        ("kettle " * (1 + index % 4) if (index % 5 == 0 if matches_at == "spread" else index < 40) else "")
        + f"line {index}"
        for index in range(200)
    ]
    ids = await add_messages(app, alice, cid, *contents)
    newest_three = [mid for mid, content in zip(ids, contents, strict=True) if "kettle" in content][-3:]
    hits, statements = await relevance_with_statements(client, app, alice, "kettle")
    assert any("recent_window" in statement for statement in statements), "no recent bound was applied"
    assert set(hits) == set(newest_three)
    # Page by page (the keyset applies on top of the bounded window) the same hits in the same order.
    assert (await relevance_with_statements(client, app, alice, "kettle", page_size=1))[0] == hits
    # The same page as without any bound, order included.
    monkeypatch.setattr(pg_terms.MessageLayout, "recent_bound", lambda *_: None)
    exact, statements = await relevance_with_statements(client, app, alice, "kettle")
    assert not any("recent_window" in statement for statement in statements)
    assert hits == exact
