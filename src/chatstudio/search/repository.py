"""Full-text search: the queries, the same on every database; each one's dialect is in dialects.

`search()` is the one entry point. It runs in two steps on every backend:
1. rank: the ids of one page of hits (messages and conversation titles, one list), filtered by owner
   and by the keyset position inside the query;
2. snippets: the highlighted text of just those rows, so the costly highlighting never runs for
   hits that are not shown.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Float,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from chatstudio.db import Statements
from chatstudio.search.dialects import Branch, Engine, Query, engine_for
from chatstudio.search.schemas import Sort
from chatstudio.search.text import Range

RELEVANCE_WINDOW = 1000


@dataclass(frozen=True, slots=True)
class Position:
    """Where the previous page ended: its last hit's rank (relevance only) and id."""

    rank: float
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SearchRow:
    conversation_id: uuid.UUID
    conversation_title: str
    message_id: uuid.UUID | None  # None: the conversation's title matched
    role: str | None
    created_at: datetime
    snippet: str
    highlights: list[Range]
    rank: float

    @property
    def id(self) -> uuid.UUID:
        return self.message_id or self.conversation_id


@dataclass(frozen=True, slots=True)
class _Ranked:
    id: uuid.UUID
    title_hit: bool
    rank: float


async def search(
    session: AsyncSession,
    user_id: uuid.UUID,
    terms: Sequence[str],
    *,
    limit: int,
    sort: Sort,
    after: Position | None = None,
) -> list[SearchRow]:
    """Hits for messages and titles of `user_id` containing every term as a word prefix, one page."""
    if not terms:
        return []
    engine = await engine_for(session, terms, sort)
    params = engine.params(user_id)
    ranked = await _rank(session, engine, params, user_id, limit=limit, sort=sort, after=after)
    message_ids = [hit.id for hit in ranked if not hit.title_hit]
    title_ids = [hit.id for hit in ranked if hit.title_hit]
    details: dict[uuid.UUID, SearchRow] = {}
    if message_ids:
        statement = _STATEMENTS.get((engine.shape, "message snippets"), engine.message_snippets)
        rows = await session.execute(statement, {**params, "ids": message_ids})
        for row in rows:
            shown, ranges = engine.marked(row.snippet)
            details[row.id] = SearchRow(
                row.conversation_id, row.title, row.id, row.role, row.created_at, shown, ranges, 0
            )
    if title_ids:
        statement = _STATEMENTS.get((engine.shape, "title snippets"), engine.title_snippets)
        rows = await session.execute(statement, {**params, "ids": title_ids})
        for row in rows:
            shown, ranges = engine.marked(row.snippet, whole=True)
            details[row.id] = SearchRow(row.id, row.title, None, None, row.created_at, shown, ranges, 0)
    # A row deleted between the two steps is simply left out of the page.
    return [_with_rank(details[hit.id], hit.rank) for hit in ranked if hit.id in details]


def _with_rank(row: SearchRow, rank: float) -> SearchRow:
    return SearchRow(
        row.conversation_id,
        row.conversation_title,
        row.message_id,
        row.role,
        row.created_at,
        row.snippet,
        row.highlights,
        rank,
    )


async def _rank(
    session: AsyncSession,
    engine: Engine,
    params: dict[str, Any],
    user_id: uuid.UUID,
    *,
    limit: int,
    sort: Sort,
    after: Position | None,
) -> list[_Ranked]:
    # Where the engine can tell where a user's newest message matches begin, the relevance window
    # is looked for there first.
    recent_from = engine.recent_from(user_id, RELEVANCE_WINDOW) if sort is Sort.RELEVANCE else None
    bounded, paged = recent_from is not None, after is not None
    statement = _STATEMENTS.get(
        (engine.shape, sort, limit, RELEVANCE_WINDOW, bounded, paged),
        lambda: _rank_statement(engine, sort, limit, bounded=bounded, paged=paged),
    )
    values = dict(params)
    if recent_from is not None:
        values["recent_from"] = recent_from
    if after is not None:
        values["after_rank"], values["after_id"] = after.rank, after.id
    rows = await session.execute(statement, values)
    return [_Ranked(row.id, bool(row.title_hit), float(row.rank)) for row in rows]


# The rank statement per (engine shape, sort, page size, window, recent bound or not, paged or not)
# and each engine's two snippet statements.
_STATEMENTS: Statements[Query] = Statements()


def _rank_statement(engine: Engine, sort: Sort, limit: int, *, bounded: bool, paged: bool) -> Query:
    """Ids of one page of hits, messages and titles in one list; its parameters are the engine's,
    `recent_from` when `bounded`, and `after_rank`/`after_id` when `paged`."""
    relevance = sort is Sort.RELEVANCE
    after_id: ColumnElement[Any] = bindparam("after_id")
    branches = []
    for branch, title_hit in ((engine.messages(), 0), (engine.titles(), 1)):
        query = branch.query
        key = branch.id
        if relevance:
            # Score only the newest RELEVANCE_WINDOW matches: a word found in 300,000 messages would
            # otherwise be scored 300,000 times per page. Below that many matches this is exact.
            query, key, rank = _relevance_window(branch, bounded and not title_hit)
            if paged:
                after_rank = bindparam("after_rank", type_=Float)
                query = query.where(or_(rank < after_rank, and_(rank == after_rank, key < after_id)))
            order: tuple[Any, ...] = (rank.desc(), key.desc())
        else:
            rank = literal_column("0.0")  # no score: PostgreSQL can stop at the first `limit` matches
            if paged:
                query = query.where(key < after_id)
            order = (key.desc(),)
        query = query.with_only_columns(
            key.label("id"),
            literal_column(str(title_hit)).label("title_hit"),
            type_coerce(rank, Float).label("rank"),
        )
        # Each side ordered and cut on its own first (SQLite wants that wrapped in a sub-select).
        side = query.order_by(*order).limit(limit).subquery()
        branches.append(select(side))
    hits = union_all(*branches).subquery("hits")
    ordering = (hits.c.rank.desc(), hits.c.id.desc()) if relevance else (hits.c.id.desc(),)
    return select(hits).order_by(*ordering).limit(limit)


def _relevance_window(branch: Branch, bounded: bool) -> tuple[Query, ColumnElement[uuid.UUID], ColumnElement[Any]]:
    """The branch's newest RELEVANCE_WINDOW matches as (query, its id column, its score); when
    `bounded`, read from ids from the parameter `recent_from` on when those hold them all."""
    newest = branch.query.order_by(branch.id.desc()).limit(RELEVANCE_WINDOW)
    if branch.scored_column is not None and branch.score is not None:
        scored = newest.with_only_columns(branch.id.label("id"), branch.scored_column.label("scored"))
        window = (
            _recent_first(scored, branch.id >= bindparam("recent_from")).subquery() if bounded else scored.subquery()
        )
        return select(window.c.id), window.c.id, branch.score(window.c.scored)
    ids = select(newest.with_only_columns(branch.id).subquery().c[0])
    return branch.query.where(branch.id.in_(ids)), branch.id, branch.rank


def _recent_first(window: Query, recent: ColumnElement[bool]) -> CompoundSelect[Any]:
    """`window` taken from the `recent` rows alone when they hold all of it, else from every row.
    PostgreSQL runs the second branch only when the first found too few (a one-time filter)."""
    from_recent = window.where(recent).cte("recent_window")
    found = select(func.count()).select_from(from_recent).scalar_subquery()
    return union_all(
        select(from_recent).where(found >= RELEVANCE_WINDOW),
        select(window.subquery()).where(found < RELEVANCE_WINDOW),
    )
