from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from chatstudio.chat.schemas import (
    ConversationCreate,
    ConversationOut,
    ConversationUpdate,
    MessageOut,
)
from chatstudio.chat.service import ConversationService
from chatstudio.deps import CurrentUser, SessionDep
from chatstudio.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from chatstudio.schemas import Page

router = APIRouter(prefix="/conversations", tags=["conversations"])

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
Cursor = Annotated[str | None, Query(max_length=500)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConversationOut)
async def create_conversation(body: ConversationCreate, user: CurrentUser, session: SessionDep) -> Any:
    return await ConversationService(session).create(user.id, body)


@router.get("", response_model=Page[ConversationOut])
async def list_conversations(
    user: CurrentUser,
    session: SessionDep,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
    q: Annotated[str | None, Query(max_length=200, description="search in titles")] = None,
    archived: bool = False,
    pinned: bool | None = None,
) -> Any:
    items, next_cursor = await ConversationService(session).list_page(
        user.id,
        limit=limit,
        cursor=cursor,
        q=q or None,
        archived=archived,
        pinned=pinned,
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{conversation_id}", response_model=ConversationOut)
async def get_conversation(conversation_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Any:
    return await ConversationService(session).get(user.id, conversation_id)


@router.patch("/{conversation_id}", response_model=ConversationOut)
async def update_conversation(
    conversation_id: uuid.UUID,
    body: ConversationUpdate,
    user: CurrentUser,
    session: SessionDep,
) -> Any:
    return await ConversationService(session).update(user.id, conversation_id, body)


@router.delete("/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(conversation_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    await ConversationService(session).delete(user.id, conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{conversation_id}/messages", response_model=Page[MessageOut])
async def list_messages(
    conversation_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> Any:
    items, next_cursor = await ConversationService(session).list_messages(
        user.id, conversation_id, limit=limit, cursor=cursor
    )
    return {"items": items, "next_cursor": next_cursor}
