"""Conversation rules: ownership, paging, updates. Flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.chat.models import Conversation
from chatstudio.chat.repository import ConversationRepository, MessageRepository
from chatstudio.chat.schemas import ChatParams, ConversationCreate, ConversationUpdate
from chatstudio.db import utcnow
from chatstudio.errors import NotFound
from chatstudio.pagination import decode_cursor, encode_cursor

DEFAULT_TITLE = "New conversation"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"
    default_message = "The conversation was not found."


def _params_dict(params: ChatParams | None) -> dict[str, Any]:
    return {} if params is None else params.model_dump(exclude_none=True)


class ConversationService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.conversations = ConversationRepository(session)
        self.messages = MessageRepository(session)

    async def create(self, user_id: uuid.UUID, data: ConversationCreate) -> Conversation:
        return await self.conversations.add(
            Conversation(
                user_id=user_id,
                title=data.title or DEFAULT_TITLE,
                model=data.model,
                system_prompt=data.system_prompt,
                params=_params_dict(data.params),
            )
        )

    async def get(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> Conversation:
        """Another user's conversation is indistinguishable from a missing one."""
        conversation = await self.conversations.get_owned(conversation_id, user_id)
        if conversation is None:
            raise ConversationNotFound()
        return conversation

    async def list_page(
        self,
        user_id: uuid.UUID,
        *,
        limit: int,
        cursor: str | None,
        q: str | None,
        archived: bool,
        pinned: bool | None,
    ) -> tuple[list[Conversation], str | None]:
        after: tuple[datetime, uuid.UUID] | None = None
        if cursor:
            at, last_id = decode_cursor(cursor, datetime, uuid.UUID)
            after = (at, last_id)
        rows = await self.conversations.list_owned(
            user_id,
            limit=limit + 1,
            after=after,
            archived=archived,
            pinned=pinned,
            title_contains=q,
        )
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].last_activity_at, rows[-1].id)
        return rows, next_cursor

    async def update(self, user_id: uuid.UUID, conversation_id: uuid.UUID, data: ConversationUpdate) -> Conversation:
        conversation = await self.get(user_id, conversation_id)
        changes = data.model_fields_set
        # title, pinned and archived cannot be null; model/system_prompt/params may be cleared.
        for name in ("title", "pinned", "archived"):
            value = getattr(data, name)
            if name in changes and value is not None:
                setattr(conversation, name, value)
        for name in ("model", "system_prompt"):
            if name in changes:
                setattr(conversation, name, getattr(data, name))
        if "params" in changes:
            conversation.params = _params_dict(data.params)
        conversation.updated_at = utcnow()
        await self.session.flush()
        return conversation

    async def delete(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        if not await self.conversations.delete_owned(conversation_id, user_id):
            raise ConversationNotFound()

    async def list_messages(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        *,
        limit: int,
        cursor: str | None,
    ) -> tuple[Sequence[Row[Any]], str | None]:
        after = decode_cursor(cursor, uuid.UUID)[0] if cursor else None
        rows = await self.messages.list_owned(conversation_id, user_id, limit=limit + 1, after=after)
        if not rows:
            # Only an empty page needs to tell a conversation without messages from a missing one
            # (or another user's): the page query itself is filtered by owner.
            await self.get(user_id, conversation_id)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].id)
        return rows, next_cursor
