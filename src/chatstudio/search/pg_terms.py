"""How common a search term is in a PostgreSQL tsvector column, from the planner's own statistics.

A GIN index answers `a:* & b:*` by expanding every prefix into the union of all its words' posting
lists before intersecting them; a short, common prefix ("gou:*") costs tens of milliseconds there even
when the other term is rare. Knowing which terms are rare lets the repository ask the index for those
only and check the common ones on the few rows found (search.dialects.Postgres).

The figures are `pg_stats.most_common_elems` (written by ANALYZE / autovacuum), read once per
STATS_TTL_SECONDS per process: a dictionary look-up per search, no query.

The same statistics say where a heavy user's newest matches begin (`MessageLayout.recent_bound`):
relevance ranks the newest RELEVANCE_WINDOW matches, and finding them for a word in 1% of a
user's messages costs either a walk back through the newest messages (84,000 rows for 1,000
matches) or a visit to every match (12,000 heap pages). A table appended to in time order, as a
live service's is, lets a BRIN index on message.id (migration 0006) confine the visits to the
newest block ranges, given an id bound: from the terms' share of rows, the user's share of all
messages (`most_common_vals` of message.user_id: the heavy users, whose searches are the costly
ones), the row count and the id histogram. The repository falls back to the whole history when the
bounded range holds fewer matches than the window, so no result depends on the estimate.
"""

from __future__ import annotations

import bisect
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncSession

STATS_TTL_SECONDS = 600.0
# Terms at most this many times as common as the rarest one still go to the index: intersecting a
# few similar posting lists in GIN is cheaper than fetching every row of the rarest to check them.
INDEX_SPREAD = 10.0

# Ask for this many times the matches the window needs, so an estimate off by up to that factor
# still finds them all in the bounded range.
RECENT_MARGIN = 2.0
# A bound that would leave more than this share of the user's messages in range saves too little.
RECENT_MAX_SHARE = 0.5
# Terms common enough that the window lies within this many of the newest messages need no bound:
# walking back through them is cheaper than intersecting the terms' long posting lists.
RECENT_WALK_ROWS = 20_000

_T = TypeVar("_T")

_QUERY = text(
    "SELECT most_common_elems::text::text[] AS elems, most_common_elem_freqs AS freqs "
    "FROM pg_stats WHERE schemaname = current_schema() AND tablename = :table AND attname = :column"
)


@dataclass(frozen=True, slots=True)
class TermFrequencies:
    """Sorted lexemes and the share of rows holding each; `floor` stands for any lexeme not listed."""

    lexemes: tuple[str, ...] = ()
    shares: tuple[float, ...] = ()
    floor: float = 0.0

    @classmethod
    def from_stats(cls, elems: Sequence[str] | None, freqs: Sequence[float] | None) -> TermFrequencies:
        if not elems or not freqs or len(freqs) < len(elems) + 2:
            return cls()
        # The array ends with the minimum and maximum element frequency, then the null frequency.
        pairs = sorted(zip(elems, freqs[: len(elems)], strict=True))
        minimum = float(freqs[len(elems)])
        return cls(tuple(p[0] for p in pairs), tuple(float(p[1]) for p in pairs), minimum / 2)

    def prefix_share(self, term: str) -> float:
        """Rows holding a word that starts with `term`, estimated as PostgreSQL's planner does: the
        listed words with that prefix summed, and an unlisted word counted as rarer than any listed."""
        start = bisect.bisect_left(self.lexemes, term)
        total = 0.0
        for index in range(start, len(self.lexemes)):
            if not self.lexemes[index].startswith(term):
                break
            total += self.shares[index]
        return max(total, self.floor)

    def selective(self, terms: Sequence[str]) -> list[str]:
        """The terms worth asking the index for: the rarest, and any nearly as rare."""
        if len(terms) < 2 or not self.lexemes:
            return list(terms)
        shares = {term: self.prefix_share(term) for term in terms}
        rarest = min(shares.values())
        return [term for term in terms if shares[term] <= rarest * INDEX_SPREAD]

    def share_of_all(self, terms: Sequence[str]) -> float:
        """Rows holding every term, as if the terms were independent (an estimate on the low side
        for related words, which widens the recent range rather than narrowing it)."""
        return math.prod(self.prefix_share(term) for term in terms) if self.lexemes else 0.0


_LAYOUT_QUERY = text(
    "SELECT c.reltuples::float8 AS row_count, "
    "(SELECT s.histogram_bounds::text::uuid[] FROM pg_stats s WHERE s.schemaname = current_schema() "
    " AND s.tablename = 'message' AND s.attname = 'id') AS bounds, "
    "(SELECT s.most_common_vals::text::uuid[] FROM pg_stats s WHERE s.schemaname = current_schema() "
    " AND s.tablename = 'message' AND s.attname = 'user_id') AS owners, "
    "(SELECT s.most_common_freqs FROM pg_stats s WHERE s.schemaname = current_schema() "
    " AND s.tablename = 'message' AND s.attname = 'user_id') AS owner_shares "
    "FROM pg_class c WHERE c.oid = to_regclass('message')"
)


@dataclass(frozen=True, slots=True)
class MessageLayout:
    """The message table's size, its id histogram (equal-row buckets, oldest first) and the shares of
    its heaviest owners."""

    rows: float = 0.0
    bounds: tuple[uuid.UUID, ...] = ()
    owners: Mapping[uuid.UUID, float] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, row: Any) -> MessageLayout:
        if row is None or not row.bounds or not row.owners or not row.owner_shares:
            return cls()
        owners = dict(zip(row.owners, (float(share) for share in row.owner_shares), strict=True))
        return cls(float(row.row_count), tuple(row.bounds), owners)

    def recent_bound(self, owner: uuid.UUID, match_share: float, wanted: int) -> uuid.UUID | None:
        """An id at or after which `owner` is expected to have RECENT_MARGIN x `wanted` matches,
        or None where no bound would pay (an owner not among the heaviest, rare or common terms)."""
        owner_share = self.owners.get(owner)
        if not owner_share or match_share <= 0 or self.rows <= 0 or len(self.bounds) < 2:
            return None
        if wanted / match_share <= RECENT_WALK_ROWS:
            return None
        share = RECENT_MARGIN * wanted / (match_share * owner_share * self.rows)
        if share >= RECENT_MAX_SHARE:
            return None
        buckets = len(self.bounds) - 1
        return self.bounds[buckets - math.ceil(share * buckets)]


_cache: dict[tuple[URL, str], tuple[float, Any]] = {}


async def _cached(session: AsyncSession, name: str, load: Callable[[], Awaitable[_T]]) -> _T:
    key = (session.get_bind().engine.url, name)
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None and now - cached[0] < STATS_TTL_SECONDS:
        found: _T = cached[1]
        return found
    found = await load()
    _cache[key] = (now, found)
    return found


async def term_frequencies(session: AsyncSession, table: str, column: str) -> TermFrequencies:
    """The column's statistics, cached per database for STATS_TTL_SECONDS."""

    async def load() -> TermFrequencies:
        row = (await session.execute(_QUERY, {"table": table, "column": column})).first()
        return TermFrequencies.from_stats(row.elems, row.freqs) if row is not None else TermFrequencies()

    return await _cached(session, f"{table}.{column}", load)


async def message_layout(session: AsyncSession) -> MessageLayout:
    """The message table's layout statistics, cached per database for STATS_TTL_SECONDS."""

    async def load() -> MessageLayout:
        return MessageLayout.from_stats((await session.execute(_LAYOUT_QUERY)).first())

    return await _cached(session, "message layout", load)


def forget() -> None:
    """Drop every cached figure (tests that ANALYZE and want the new ones at once)."""
    _cache.clear()
