"""How common a search term is in a PostgreSQL tsvector column, from the planner's own statistics.

A GIN index answers `a:* & b:*` by expanding every prefix into the union of all its words' posting
lists before intersecting them; a short, common prefix ("gou:*") costs tens of milliseconds there even
when the other term is rare. Knowing which terms are rare lets the repository ask the index for those
only and check the common ones on the few rows found (search.repository._Postgres).

The figures are `pg_stats.most_common_elems` (written by ANALYZE / autovacuum), read once per
STATS_TTL_SECONDS per process: a dictionary look-up per search, no query.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncSession

STATS_TTL_SECONDS = 600.0
# Terms at most this many times as common as the rarest one still go to the index: intersecting a
# few similar posting lists in GIN is cheaper than fetching every row of the rarest to check them.
INDEX_SPREAD = 10.0

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


_cache: dict[tuple[URL, str, str], tuple[float, TermFrequencies]] = {}


async def term_frequencies(session: AsyncSession, table: str, column: str) -> TermFrequencies:
    """The column's statistics, cached per database for STATS_TTL_SECONDS."""
    key = (session.get_bind().engine.url, table, column)
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None and now - cached[0] < STATS_TTL_SECONDS:
        return cached[1]
    row = (await session.execute(_QUERY, {"table": table, "column": column})).first()
    found = TermFrequencies.from_stats(row.elems, row.freqs) if row is not None else TermFrequencies()
    _cache[key] = (now, found)
    return found


def forget() -> None:
    """Drop every cached figure (tests that ANALYZE and want the new ones at once)."""
    _cache.clear()
