"""PostgreSQL plans each search for its own words, and the settings that make it so stay in the
search's transaction: the pool's other statements keep the server's defaults."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from chatstudio.search import repository
from chatstudio.search.schemas import Sort
from tests.conftest import SignedIn
from tests.search.test_search import add_messages, conversation

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
