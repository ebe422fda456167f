from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from chatstudio.deps import CurrentUser, SessionDep
from chatstudio.pagination import MAX_PAGE_SIZE
from chatstudio.schemas import Page
from chatstudio.search.schemas import SearchHitOut, Sort
from chatstudio.search.service import SearchService

router = APIRouter(prefix="/search", tags=["search"])

DEFAULT_LIMIT = 20


@router.get("", response_model=Page[SearchHitOut])
async def search(
    user: CurrentUser,
    session: SessionDep,
    q: Annotated[str, Query(min_length=1, max_length=200, description="words to find, each as a word prefix")],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    sort: Sort = Sort.RECENT,
) -> Any:
    """The caller's own messages and conversation titles containing every word of `q` (each as a word
    or the start of one). `sort=recent` (default): newest first, pages stable while new messages
    arrive. `sort=relevance`: best matches first among the newest 1,000 matching messages (and
    titles); scores depend on the whole corpus, so pages may shift while messages are being added."""
    items, next_cursor = await SearchService(session).search(user.id, q, limit=limit, cursor=cursor, sort=sort)
    return {"items": items, "next_cursor": next_cursor}
