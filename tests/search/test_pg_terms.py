"""Rare terms to the GIN index, common ones checked on the rows found; the recent bound of the
relevance window: the estimates and the query."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from chatstudio.search import pg_terms
from chatstudio.search.pg_terms import MessageLayout, TermFrequencies
from tests.conftest import SignedIn
from tests.search.test_search import add_messages, conversation, search

# pg_stats' layout: one share per element, then the minimum and maximum share and the null share.
STATS = TermFrequencies.from_stats(
    ["gou", "goubo", "gouco", "leaf", "zed"], [0.3, 0.2, 0.1, 0.004, 0.01, 0.004, 0.3, 0]
)


def test_a_prefix_counts_every_listed_word_it_starts() -> None:
    assert STATS.prefix_share("gou") == pytest.approx(0.6)
    assert STATS.prefix_share("goub") == pytest.approx(0.2)
    assert STATS.prefix_share("le") == pytest.approx(0.004)


def test_an_unlisted_word_is_rarer_than_any_listed() -> None:
    assert STATS.prefix_share("leafea") == pytest.approx(0.002)
    assert STATS.prefix_share("zz") == pytest.approx(0.002)


def test_only_the_rare_terms_are_selected() -> None:
    assert STATS.selective(["gou", "leafea"]) == ["leafea"]
    # Within INDEX_SPREAD of the rarest: both stay, GIN intersects them.
    assert STATS.selective(["leaf", "zed", "gou"]) == ["leaf", "zed"]
    assert STATS.selective(["gou"]) == ["gou"]


def test_without_statistics_every_term_goes_to_the_index() -> None:
    assert TermFrequencies.from_stats(None, None).selective(["gou", "leafea"]) == ["gou", "leafea"]
    # A malformed row (no trailing min/max/null shares) is treated as no statistics.
    assert TermFrequencies.from_stats(["a"], [0.5]).selective(["a", "b"]) == ["a", "b"]


async def test_a_common_term_is_checked_on_the_rows_the_rare_one_found(
    client: httpx.AsyncClient, app: Any, alice: SignedIn, backend: Any
) -> None:
    if backend.name != "postgres":
        pytest.skip("pg_stats and GIN are PostgreSQL's")
    cid = await conversation(client, alice, "Gadgets")
    both, rare_only, *_ = await add_messages(
        app,
        alice,
        cid,
        "gadget zephyr",
        "zephyr alone",
        *[f"gadget number {index}" for index in range(60)],
    )
    async with app.state.engine.begin() as conn:
        await conn.execute(text("ANALYZE message"))
    pg_terms.forget()
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", capture)
    try:
        hits = (await search(client, alice, "gad zephyr", limit=100))["items"]
        relevance = (await search(client, alice, "gad zephyr", sort="relevance", limit=100))["items"]
    finally:
        event.remove(app.state.engine.sync_engine, "before_cursor_execute", capture)
        pg_terms.forget()
    # Every term still has to match: the message with only the rare word is not a hit.
    assert [hit["message_id"] for hit in hits] == [both]
    assert [hit["message_id"] for hit in relevance] == [both]
    assert rare_only not in {hit["message_id"] for hit in hits}
    ranked = [(s, p) for s, p in statements if "ts_match_vq" in s and "FROM message" in s]
    assert ranked, "the common term was not moved out of the index condition"
    for _statement, parameters in ranked:
        values = list(parameters.values()) if isinstance(parameters, dict) else list(parameters)
        assert "'zephyr':*" in values  # what the index is asked
        assert "'gad':* & 'zephyr':*" in values  # what each row is checked against


def layout(owner_share: float = 1.0) -> MessageLayout:
    # 1,000,000 rows; 11 bounds = 10 buckets of 100,000 rows, oldest first.
    bounds = tuple(uuid.UUID(int=index) for index in range(11))
    return MessageLayout(1_000_000.0, bounds, {OWNER: owner_share})


OWNER = uuid.UUID(int=42)


def test_the_recent_bound_covers_the_margin_of_the_matches_wanted() -> None:
    # A term in 2% of rows: 1,000 matches need 50,000 rows, twice that is 1 bucket.
    assert layout().recent_bound(OWNER, 0.02, 1000) == uuid.UUID(int=9)
    # The owner holds a fifth of the table: five times the rows, 5 buckets, half the owner's rows.
    assert layout(0.2).recent_bound(OWNER, 0.02, 1000) is None
    assert layout(0.5).recent_bound(OWNER, 0.02, 1000) == uuid.UUID(int=8)
    # Part of a bucket is a whole bucket: the range is never narrower than estimated.
    assert layout().recent_bound(OWNER, 0.015, 1000) == uuid.UUID(int=8)


def test_no_recent_bound_where_it_would_not_pay_or_cannot_be_estimated() -> None:
    assert layout().recent_bound(OWNER, 0.002, 1000) is None  # rare: the range would be everything
    assert layout().recent_bound(OWNER, 0.10, 1000) is None  # common: the newest 10,000 hold them
    assert layout().recent_bound(uuid.UUID(int=7), 0.02, 1000) is None  # not among the heavy owners
    assert layout().recent_bound(OWNER, 0.0, 1000) is None
    assert MessageLayout().recent_bound(OWNER, 0.02, 1000) is None


def test_terms_together_are_estimated_as_independent() -> None:
    assert STATS.share_of_all(["gou", "leaf"]) == pytest.approx(0.6 * 0.004)
    assert TermFrequencies().share_of_all(["gou"]) == 0.0
