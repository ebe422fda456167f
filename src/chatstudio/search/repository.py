"""Full-text search SQL: the only module that speaks each database's full-text dialect (with
pg_terms, which reads PostgreSQL's statistics of the searched columns).

`search()` is the one entry point. It runs in two steps on every backend:
1. rank: the ids of one page of hits (messages and conversation titles, one list), filtered by owner
   and by the keyset position inside the query;
2. snippets: the highlighted text of just those rows, so the costly highlighting never runs for
   hits that are not shown.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    Boolean,
    CompoundSelect,
    Float,
    Select,
    and_,
    case,
    column,
    func,
    literal_column,
    or_,
    select,
    table,
    text,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from chatstudio.chat.models import Conversation, Message
from chatstudio.search.pg_terms import MessageLayout, TermFrequencies, message_layout, term_frequencies
from chatstudio.search.schemas import Sort
from chatstudio.search.text import MARK_END, MARK_START, SNIPPET_CHARS, Range, highlight, unmark

_Query: TypeAlias = Select[*tuple[Any, ...]]


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


@dataclass(frozen=True, slots=True)
class _Branch:
    query: _Query
    rank: ColumnElement[float]
    id: ColumnElement[uuid.UUID]
    # Where the score is a function of one stored column (PostgreSQL's tsvector), the relevance
    # window carries that column out of its one pass over the matches and is scored there, instead
    # of fetching its rows a second time by id to score them.
    scored_column: ColumnElement[Any] | None = None
    score: Callable[[ColumnElement[Any]], ColumnElement[float]] | None = None
    # Ids from here on are expected to hold the whole relevance window (pg_terms.MessageLayout).
    recent_from: uuid.UUID | None = None


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
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # A search's plan depends on how common its words are; a plan cached for the statement
        # (PostgreSQL's generic plan, taken after five runs on a connection) ignores that, and one
        # made for no word in particular took 1.3 s for a common 3-letter prefix instead of 10 ms.
        await session.execute(_SEARCH_PLANNER)
        engine: _Engine = _Postgres(
            terms,
            messages=await term_frequencies(session, "message", "content_fts"),
            titles=await term_frequencies(session, "conversation", "title_fts"),
            layout=await message_layout(session) if sort is Sort.RELEVANCE else MessageLayout(),
        )
    elif dialect == "sqlite":
        engine = _Sqlite(terms)
    elif dialect in ("mysql", "mariadb"):
        engine = _MySQL(terms)
    else:
        raise NotImplementedError(f"no full-text search for {dialect}")
    ranked = await _rank(session, engine, user_id, limit=limit, sort=sort, after=after)
    message_ids = [hit.id for hit in ranked if not hit.title_hit]
    title_ids = [hit.id for hit in ranked if hit.title_hit]
    details: dict[uuid.UUID, SearchRow] = {}
    if message_ids:
        rows = await session.execute(engine.message_snippets(user_id, message_ids))
        for row in rows:
            shown, ranges = engine.marked(row.snippet)
            details[row.id] = SearchRow(
                row.conversation_id, row.title, row.id, row.role, row.created_at, shown, ranges, 0
            )
    if title_ids:
        rows = await session.execute(engine.title_snippets(user_id, title_ids))
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
    engine: _Engine,
    user_id: uuid.UUID,
    *,
    limit: int,
    sort: Sort,
    after: Position | None,
) -> list[_Ranked]:
    relevance = sort is Sort.RELEVANCE
    branches = []
    for branch, title_hit in ((engine.messages(user_id), 0), (engine.titles(user_id), 1)):
        query = branch.query
        key = branch.id
        if relevance:
            # Score only the newest RELEVANCE_WINDOW matches: a word found in 300,000 messages would
            # otherwise be scored 300,000 times per page. Below that many matches this is exact.
            query, key, rank = _relevance_window(branch)
            if after is not None:
                query = query.where(or_(rank < after.rank, and_(rank == after.rank, key < after.id)))
            order: tuple[Any, ...] = (rank.desc(), key.desc())
        else:
            rank = literal_column("0.0")  # no score: PostgreSQL can stop at the first `limit` matches
            if after is not None:
                query = query.where(key < after.id)
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
    rows = await session.execute(select(hits).order_by(*ordering).limit(limit))
    return [_Ranked(row.id, bool(row.title_hit), float(row.rank)) for row in rows]


def _relevance_window(branch: _Branch) -> tuple[_Query, ColumnElement[uuid.UUID], ColumnElement[Any]]:
    """The branch's newest RELEVANCE_WINDOW matches as (query, its id column, its score)."""
    newest = branch.query.order_by(branch.id.desc()).limit(RELEVANCE_WINDOW)
    if branch.scored_column is not None and branch.score is not None:
        scored = newest.with_only_columns(branch.id.label("id"), branch.scored_column.label("scored"))
        window = (
            scored.subquery()
            if branch.recent_from is None
            else _recent_first(scored, branch.id >= branch.recent_from).subquery()
        )
        return select(window.c.id), window.c.id, branch.score(window.c.scored)
    ids = select(newest.with_only_columns(branch.id).subquery().c[0])
    return branch.query.where(branch.id.in_(ids)), branch.id, branch.rank


def _recent_first(window: _Query, recent: ColumnElement[bool]) -> CompoundSelect[Any]:
    """`window` taken from the `recent` rows alone when they hold all of it, else from every row.
    PostgreSQL runs the second branch only when the first found too few (a one-time filter)."""
    from_recent = window.where(recent).cte("recent_window")
    found = select(func.count()).select_from(from_recent).scalar_subquery()
    return union_all(
        select(from_recent).where(found >= RELEVANCE_WINDOW),
        select(window.subquery()).where(found < RELEVANCE_WINDOW),
    )


class _Engine:
    """One database's full-text syntax: how to match, score and highlight."""

    def __init__(self, terms: Sequence[str]) -> None:
        self.terms = list(terms)

    def messages(self, user_id: uuid.UUID) -> _Branch:
        raise NotImplementedError

    def titles(self, user_id: uuid.UUID) -> _Branch:
        raise NotImplementedError

    def message_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        """Columns id, conversation_id, title, role, created_at, snippet (marked or plain)."""
        raise NotImplementedError

    def title_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        """Columns id, title, created_at, snippet (marked or plain)."""
        raise NotImplementedError

    def marked(self, snippet: str, *, whole: bool = False) -> tuple[str, list[Range]]:
        return unmark(snippet)


def _message_columns() -> tuple[Any, ...]:
    return (Message.id, Message.conversation_id, Conversation.title, Message.role, Message.created_at)


def _owned_messages(user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
    return (
        select(*_message_columns())
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.id.in_(ids), Message.user_id == user_id)
    )


def _owned_titles(user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
    return select(Conversation.id, Conversation.title, Conversation.created_at).where(
        Conversation.id.in_(ids), Conversation.user_id == user_id
    )


# Planner settings for this transaction's search statements (see search()). random_page_cost: the
# default (4) prices a page out of order as four read in order, as on a spinning disk; on SSD or
# cache, where a database of this size lives, that sent a word in 0.7% of messages down a 133,000-row
# walk of the newest messages (160 ms) instead of to its 7,000 matches (30 ms). A value an operator
# set on purpose is kept.
_SEARCH_PLANNER = text(
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
    "set_config('random_page_cost', CASE current_setting('random_page_cost') WHEN '4' THEN '1.1' "
    "ELSE current_setting('random_page_cost') END, true)"
)
# The text search configuration of the stored columns (see migration 0002).
_SIMPLE: ColumnElement[Any] = literal_column("'simple'")
_PG_MESSAGE_HEADLINE = (
    f'StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=" … "'
)
_PG_WHOLE_HEADLINE = f"StartSel={MARK_START}, StopSel={MARK_END}, HighlightAll=true"


class _Postgres(_Engine):
    """Stored tsvector columns (content_fts, title_fts) with GIN indexes; ts_rank to score,
    ts_headline to highlight. The columns are the migration's, not the models'.

    Only the rare terms of a query go to the index (pg_terms): a common prefix is checked on the
    rows the rare ones found instead of being expanded in GIN."""

    def __init__(
        self, terms: Sequence[str], *, messages: TermFrequencies, titles: TermFrequencies, layout: MessageLayout
    ) -> None:
        super().__init__(terms)
        self.frequencies = {"message": messages, "conversation": titles}
        self.layout = layout

    def _query(self, terms: Sequence[str] | None = None) -> ColumnElement[Any]:
        # Every term is letters and digits only (text.terms_of), so quoting it is enough.
        syntax = " & ".join(f"'{term}':*" for term in (self.terms if terms is None else terms))
        return func.to_tsquery(_SIMPLE, syntax)

    def _branch(self, key: Any, owner: Any, vector: str, user_id: uuid.UUID) -> _Branch:
        stored: ColumnElement[Any] = literal_column(vector)
        query = self._query()
        indexed = self.frequencies[key.table.name].selective(self.terms)
        match: list[ColumnElement[bool]] = [stored.bool_op("@@")(self._query(indexed))]
        if len(indexed) < len(self.terms):
            # ts_match_vq is @@ spelled as a function, which the planner never takes to an index.
            match.append(func.ts_match_vq(stored, query, type_=Boolean))

        def score(vector: ColumnElement[Any]) -> ColumnElement[float]:
            return func.ts_rank(vector, query, 1, type_=Float)

        return _Branch(select(key).where(owner == user_id, *match), score(stored), key, stored, score)

    def messages(self, user_id: uuid.UUID) -> _Branch:
        branch = self._branch(Message.id, Message.user_id, "message.content_fts", user_id)
        share = self.frequencies["message"].share_of_all(self.terms)
        bound = self.layout.recent_bound(user_id, share, RELEVANCE_WINDOW)
        return branch if bound is None else dataclasses.replace(branch, recent_from=bound)

    def titles(self, user_id: uuid.UUID) -> _Branch:
        return self._branch(Conversation.id, Conversation.user_id, "conversation.title_fts", user_id)

    def message_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        # Fragments drop words at their edges; a short message is shown whole instead.
        whole = func.ts_headline(_SIMPLE, Message.content, self._query(), _PG_WHOLE_HEADLINE)
        fragments = func.ts_headline(_SIMPLE, Message.content, self._query(), _PG_MESSAGE_HEADLINE)
        headline = case((func.length(Message.content) <= SNIPPET_CHARS, whole), else_=fragments)
        return _owned_messages(user_id, ids).add_columns(headline.label("snippet"))

    def title_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        headline = func.ts_headline(_SIMPLE, Conversation.title, self._query(), _PG_WHOLE_HEADLINE)
        return _owned_titles(user_id, ids).add_columns(headline.label("snippet"))


_MESSAGE_FTS = table("message_fts", column("rowid"))
_CONVERSATION_FTS = table("conversation_fts", column("rowid"))
SQLITE_SNIPPET_TOKENS = 32


class _Sqlite(_Engine):
    """External-content FTS5 tables keyed by rowid; bm25() to score, snippet()/highlight() to mark."""

    def _match(self, fts: Any) -> ColumnElement[bool]:
        # FTS5 string syntax: "word"* is a prefix query; terms are letters and digits only.
        syntax = " ".join(f'"{term}"*' for term in self.terms)
        return literal_column(fts.name).bool_op("MATCH")(syntax)

    def _branch(self, key: Any, owner: Any, fts: Any, user_id: uuid.UUID) -> _Branch:
        # bm25 is lower for better matches; negated, every backend ranks "higher is better".
        rank: ColumnElement[float] = -func.bm25(literal_column(fts.name), type_=Float)
        base = key.table
        query = (
            select(key)
            .select_from(fts)
            .join(base, literal_column(f"{base.name}.rowid") == fts.c.rowid)
            .where(self._match(fts), owner == user_id)
        )
        return _Branch(query, rank, key)

    def messages(self, user_id: uuid.UUID) -> _Branch:
        return self._branch(Message.id, Message.user_id, _MESSAGE_FTS, user_id)

    def titles(self, user_id: uuid.UUID) -> _Branch:
        return self._branch(Conversation.id, Conversation.user_id, _CONVERSATION_FTS, user_id)

    def message_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        snippet = func.snippet(literal_column("message_fts"), 0, MARK_START, MARK_END, "…", SQLITE_SNIPPET_TOKENS)
        return (
            _owned_messages(user_id, ids)
            .join(_MESSAGE_FTS, _MESSAGE_FTS.c.rowid == literal_column("message.rowid"))
            .where(self._match(_MESSAGE_FTS))
            .add_columns(type_coerce(snippet, Message.content.type).label("snippet"))
        )

    def title_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        marked = func.highlight(literal_column("conversation_fts"), 0, MARK_START, MARK_END)
        return (
            _owned_titles(user_id, ids)
            .join(_CONVERSATION_FTS, _CONVERSATION_FTS.c.rowid == literal_column("conversation.rowid"))
            .where(self._match(_CONVERSATION_FTS))
            .add_columns(type_coerce(marked, Conversation.title.type).label("snippet"))
        )


class _MySQL(_Engine):
    """InnoDB FULLTEXT indexes, MATCH ... AGAINST in boolean mode; highlights computed here."""

    def _match(self, searched: Any) -> Any:
        # +word* : every term required, as a word prefix. Terms are letters and digits only.
        syntax = " ".join(f"+{term}*" for term in self.terms)
        return mysql.match(searched, against=syntax).in_boolean_mode()

    def _branch(self, key: Any, owner: Any, searched: Any, user_id: uuid.UUID) -> _Branch:
        # A bare MATCH in WHERE is what lets InnoDB answer from the FULLTEXT index.
        score: ColumnElement[float] = type_coerce(self._match(searched), Float)
        return _Branch(select(key).where(owner == user_id, self._match(searched)), score, key)

    def messages(self, user_id: uuid.UUID) -> _Branch:
        return self._branch(Message.id, Message.user_id, Message.content, user_id)

    def titles(self, user_id: uuid.UUID) -> _Branch:
        return self._branch(Conversation.id, Conversation.user_id, Conversation.title, user_id)

    def message_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        return _owned_messages(user_id, ids).add_columns(Message.content.label("snippet"))

    def title_snippets(self, user_id: uuid.UUID, ids: list[uuid.UUID]) -> _Query:
        return _owned_titles(user_id, ids).add_columns(Conversation.title.label("snippet"))

    def marked(self, snippet: str, *, whole: bool = False) -> tuple[str, list[Range]]:
        return highlight(snippet, self.terms, whole=whole)
