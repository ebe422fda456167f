"""Each database's full-text dialect: how to match, score and highlight. The repository runs the
same two steps on all of them; only this module (with pg_terms, which reads PostgreSQL's statistics
of the searched columns) speaks a dialect.

Statements hold no value of the search they serve: the user, the query syntax and the positions are
named parameters (`Engine.params`, and the repository's own), so one statement built for a search's
shape (`Engine.shape`) serves every later search of that shape. Building one took longer than
running it (about 4 ms of CPU for a relevance search on PostgreSQL, measured)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from sqlalchemy import (
    Boolean,
    Float,
    Select,
    String,
    bindparam,
    case,
    column,
    func,
    literal_column,
    select,
    table,
    text,
    type_coerce,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from chatstudio.chat.models import Conversation, Message
from chatstudio.search.pg_terms import MessageLayout, TermFrequencies, message_layout, term_frequencies
from chatstudio.search.schemas import Sort
from chatstudio.search.text import MARK_END, MARK_START, SNIPPET_CHARS, Range, highlight, unmark

Query: TypeAlias = Select[*tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Branch:
    query: Query
    rank: ColumnElement[float]
    id: ColumnElement[uuid.UUID]
    # Where the score is a function of one stored column (PostgreSQL's tsvector), the relevance
    # window carries that column out of its one pass over the matches and is scored there, instead
    # of fetching its rows a second time by id to score them.
    scored_column: ColumnElement[Any] | None = None
    score: Callable[[ColumnElement[Any]], ColumnElement[float]] | None = None


def _owner_is(owner: ColumnElement[uuid.UUID] | InstrumentedAttribute[uuid.UUID]) -> ColumnElement[bool]:
    return owner == bindparam("user_id")


class Engine:
    """One database's full-text syntax: how to match, score and highlight."""

    def __init__(self, terms: Sequence[str]) -> None:
        self.terms = list(terms)

    @property
    def shape(self) -> Hashable:
        """What the built statements depend on besides their parameters: equal shapes, same statements."""
        return type(self).__name__

    def params(self, user_id: uuid.UUID) -> dict[str, Any]:
        """The values of the named parameters in this engine's statements."""
        return {"user_id": user_id}

    def messages(self) -> Branch:
        raise NotImplementedError

    def titles(self) -> Branch:
        raise NotImplementedError

    def message_snippets(self) -> Query:
        """Columns id, conversation_id, title, role, created_at, snippet (marked or plain) of the
        messages whose ids are the parameter `ids`."""
        raise NotImplementedError

    def title_snippets(self) -> Query:
        """Columns id, title, created_at, snippet (marked or plain) of the conversations whose ids
        are the parameter `ids`."""
        raise NotImplementedError

    def marked(self, snippet: str, *, whole: bool = False) -> tuple[str, list[Range]]:
        return unmark(snippet)

    def recent_from(self, user_id: uuid.UUID, wanted: int) -> uuid.UUID | None:
        """An id from which on the user's newest `wanted` message matches are expected (None: no
        estimate); the repository reads the relevance window there first."""
        return None


def _message_columns() -> tuple[Any, ...]:
    return (Message.id, Message.conversation_id, Conversation.title, Message.role, Message.created_at)


def _listed(key: Any) -> ColumnElement[bool]:
    return key.in_(bindparam("ids", expanding=True))  # type: ignore[no-any-return]


def _owned_messages() -> Query:
    return (
        select(*_message_columns())
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(_listed(Message.id), _owner_is(Message.user_id))
    )


def _owned_titles() -> Query:
    return select(Conversation.id, Conversation.title, Conversation.created_at).where(
        _listed(Conversation.id), _owner_is(Conversation.user_id)
    )


# Planner settings for this transaction's search statements (see engine_for()). random_page_cost: the
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


class Postgres(Engine):
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
        self.indexed = {table: frequencies.selective(self.terms) for table, frequencies in self.frequencies.items()}

    @property
    def shape(self) -> Hashable:
        # Which tables check some terms outside the index: that adds a condition to their branch.
        partial = tuple(sorted(table for table, terms in self.indexed.items() if len(terms) < len(self.terms)))
        return (type(self).__name__, partial)

    def params(self, user_id: uuid.UUID) -> dict[str, Any]:
        values = {"user_id": user_id, "tsquery": _syntax(self.terms)}
        values.update((f"tsquery_{table}", _syntax(terms)) for table, terms in self.indexed.items())
        return values

    @staticmethod
    def _query(parameter: str = "tsquery") -> ColumnElement[Any]:
        return func.to_tsquery(_SIMPLE, bindparam(parameter, type_=String))

    def _branch(self, key: Any, owner: Any, vector: str) -> Branch:
        stored: ColumnElement[Any] = literal_column(vector)
        query = self._query()
        table = key.table.name
        match: list[ColumnElement[bool]] = [stored.bool_op("@@")(self._query(f"tsquery_{table}"))]
        if len(self.indexed[table]) < len(self.terms):
            # ts_match_vq is @@ spelled as a function, which the planner never takes to an index.
            match.append(func.ts_match_vq(stored, query, type_=Boolean))

        def score(vector: ColumnElement[Any]) -> ColumnElement[float]:
            return func.ts_rank(vector, query, 1, type_=Float)

        return Branch(select(key).where(_owner_is(owner), *match), score(stored), key, stored, score)

    def messages(self) -> Branch:
        return self._branch(Message.id, Message.user_id, "message.content_fts")

    def recent_from(self, user_id: uuid.UUID, wanted: int) -> uuid.UUID | None:
        share = self.frequencies["message"].share_of_all(self.terms)
        return self.layout.recent_bound(user_id, share, wanted)

    def titles(self) -> Branch:
        return self._branch(Conversation.id, Conversation.user_id, "conversation.title_fts")

    def message_snippets(self) -> Query:
        # Fragments drop words at their edges; a short message is shown whole instead.
        whole = func.ts_headline(_SIMPLE, Message.content, self._query(), _PG_WHOLE_HEADLINE)
        fragments = func.ts_headline(_SIMPLE, Message.content, self._query(), _PG_MESSAGE_HEADLINE)
        headline = case((func.length(Message.content) <= SNIPPET_CHARS, whole), else_=fragments)
        return _owned_messages().add_columns(headline.label("snippet"))

    def title_snippets(self) -> Query:
        headline = func.ts_headline(_SIMPLE, Conversation.title, self._query(), _PG_WHOLE_HEADLINE)
        return _owned_titles().add_columns(headline.label("snippet"))


def _syntax(terms: Sequence[str]) -> str:
    # Every term is letters and digits only (text.terms_of), so quoting it is enough.
    return " & ".join(f"'{term}':*" for term in terms)


_MESSAGE_FTS = table("message_fts", column("rowid"))
_CONVERSATION_FTS = table("conversation_fts", column("rowid"))
SQLITE_SNIPPET_TOKENS = 32


class Sqlite(Engine):
    """External-content FTS5 tables keyed by rowid; bm25() to score, snippet()/highlight() to mark."""

    def params(self, user_id: uuid.UUID) -> dict[str, Any]:
        # FTS5 string syntax: "word"* is a prefix query; terms are letters and digits only.
        return {"user_id": user_id, "match": " ".join(f'"{term}"*' for term in self.terms)}

    @staticmethod
    def _match(fts: Any) -> ColumnElement[bool]:
        return literal_column(fts.name).bool_op("MATCH")(bindparam("match", type_=String))

    def _branch(self, key: Any, owner: Any, fts: Any) -> Branch:
        # bm25 is lower for better matches; negated, every backend ranks "higher is better".
        rank: ColumnElement[float] = -func.bm25(literal_column(fts.name), type_=Float)
        base = key.table
        query = (
            select(key)
            .select_from(fts)
            .join(base, literal_column(f"{base.name}.rowid") == fts.c.rowid)
            .where(self._match(fts), _owner_is(owner))
        )
        return Branch(query, rank, key)

    def messages(self) -> Branch:
        return self._branch(Message.id, Message.user_id, _MESSAGE_FTS)

    def titles(self) -> Branch:
        return self._branch(Conversation.id, Conversation.user_id, _CONVERSATION_FTS)

    def message_snippets(self) -> Query:
        snippet = func.snippet(literal_column("message_fts"), 0, MARK_START, MARK_END, "…", SQLITE_SNIPPET_TOKENS)
        return (
            _owned_messages()
            .join(_MESSAGE_FTS, _MESSAGE_FTS.c.rowid == literal_column("message.rowid"))
            .where(self._match(_MESSAGE_FTS))
            .add_columns(type_coerce(snippet, Message.content.type).label("snippet"))
        )

    def title_snippets(self) -> Query:
        marked = func.highlight(literal_column("conversation_fts"), 0, MARK_START, MARK_END)
        return (
            _owned_titles()
            .join(_CONVERSATION_FTS, _CONVERSATION_FTS.c.rowid == literal_column("conversation.rowid"))
            .where(self._match(_CONVERSATION_FTS))
            .add_columns(type_coerce(marked, Conversation.title.type).label("snippet"))
        )


class MySQL(Engine):
    """InnoDB FULLTEXT indexes, MATCH ... AGAINST in boolean mode; highlights computed here."""

    def params(self, user_id: uuid.UUID) -> dict[str, Any]:
        # +word* : every term required, as a word prefix. Terms are letters and digits only.
        return {"user_id": user_id, "against": " ".join(f"+{term}*" for term in self.terms)}

    @staticmethod
    def _match(searched: Any) -> Any:
        return mysql.match(searched, against=bindparam("against", type_=String)).in_boolean_mode()

    def _branch(self, key: Any, owner: Any, searched: Any) -> Branch:
        # A bare MATCH in WHERE is what lets InnoDB answer from the FULLTEXT index.
        score: ColumnElement[float] = type_coerce(self._match(searched), Float)
        return Branch(select(key).where(_owner_is(owner), self._match(searched)), score, key)

    def messages(self) -> Branch:
        return self._branch(Message.id, Message.user_id, Message.content)

    def titles(self) -> Branch:
        return self._branch(Conversation.id, Conversation.user_id, Conversation.title)

    def message_snippets(self) -> Query:
        return _owned_messages().add_columns(Message.content.label("snippet"))

    def title_snippets(self) -> Query:
        return _owned_titles().add_columns(Conversation.title.label("snippet"))

    def marked(self, snippet: str, *, whole: bool = False) -> tuple[str, list[Range]]:
        return highlight(snippet, self.terms, whole=whole)


async def engine_for(session: AsyncSession, terms: Sequence[str], sort: Sort) -> Engine:
    """The session's database's engine for `terms`."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # A search's plan depends on how common its words are; a plan cached for the statement
        # (PostgreSQL's generic plan, taken after five runs on a connection) ignores that, and one
        # made for no word in particular took 1.3 s for a common 3-letter prefix instead of 10 ms.
        await session.execute(_SEARCH_PLANNER)
        return Postgres(
            terms,
            messages=await term_frequencies(session, "message", "content_fts"),
            titles=await term_frequencies(session, "conversation", "title_fts"),
            layout=await message_layout(session) if sort is Sort.RELEVANCE else MessageLayout(),
        )
    if dialect == "sqlite":
        return Sqlite(terms)
    if dialect in ("mysql", "mariadb"):
        return MySQL(terms)
    raise NotImplementedError(f"no full-text search for {dialect}")
