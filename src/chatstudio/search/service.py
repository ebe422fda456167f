"""Search rules: turn what the user typed into plain terms, page through hits. Flushes nothing."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.pagination import decode_cursor, encode_cursor
from chatstudio.search import repository
from chatstudio.search.repository import Position, SearchRow
from chatstudio.search.schemas import Sort
from chatstudio.search.text import terms_of


class SearchService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def search(
        self, user_id: uuid.UUID, q: str, *, limit: int, cursor: str | None, sort: Sort
    ) -> tuple[list[SearchRow], str | None]:
        """Every word of `q` must appear (as a word or the start of one). Operators, quotes and the
        like are not syntax here: they separate words, so no input is an error and none reaches SQL
        as anything but plain words. A query without words finds nothing."""
        after = self._position(cursor, sort) if cursor else None
        terms = terms_of(q)
        rows = await repository.search(self.session, user_id, terms, limit=limit + 1, sort=sort, after=after)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = encode_cursor(last.rank, last.id) if sort is Sort.RELEVANCE else encode_cursor(last.id)
        return rows, next_cursor

    @staticmethod
    def _position(cursor: str, sort: Sort) -> Position:
        if sort is Sort.RELEVANCE:
            rank, last_id = decode_cursor(cursor, float, uuid.UUID)
            return Position(rank, last_id)
        return Position(0.0, decode_cursor(cursor, uuid.UUID)[0])
