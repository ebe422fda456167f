"""Every SQL statement about conversations and messages. Each one filters by owner itself."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, String, Table, and_, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from chatstudio.chat.history import StoredTurn, branch
from chatstudio.chat.models import Conversation, Message, MessageStatus
from chatstudio.db import like_contains
from chatstudio.files.models import MessageFile

_MESSAGE_TABLE = cast(Table, Message.__table__)
_CONVERSATION_TABLE = cast(Table, Conversation.__table__)
_MESSAGE_FILE_TABLE = cast(Table, MessageFile.__table__)


class ConversationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, conversation: Conversation) -> Conversation:
        self.session.add(conversation)
        await self.session.flush()
        return conversation

    async def touch(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID, at: datetime, title: str | None = None
    ) -> None:
        """A new message: the conversation moves to the top of the list (and takes its first title)."""
        # The SET clause comes from the parameters' keys (one statement, two shapes).
        values: dict[str, Any] = {"touched_id": conversation_id, "owner_id": user_id, "last_activity_at": at}
        if title is not None:
            values["title"] = title
        await self.session.execute(_TOUCH, values)

    async def for_turn(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Row[Any, Any, Any, Any] | None:
        """What a new turn reads of its conversation (title, model, system_prompt, params), as a plain row:
        it runs on every turn, and a mapped object costs more to build than the query."""
        values = {"conversation_id": conversation_id, "user_id": user_id}
        return (await self.session.execute(_TURN_CONVERSATION, values)).one_or_none()

    async def get_owned(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Conversation | None:
        result = await self.session.execute(
            select(Conversation).where(Conversation.id == conversation_id, Conversation.user_id == user_id)
        )
        return result.scalar_one_or_none()

    async def list_owned(
        self,
        user_id: uuid.UUID,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None = None,
        archived: bool = False,
        pinned: bool | None = None,
        title_contains: str | None = None,
    ) -> list[Conversation]:
        """Most recently active first; keyset on (last_activity_at, id), served by
        ix_conversation_user_list / ix_conversation_user_pinned."""
        query = _conversation_page(limit, archived, pinned, bool(title_contains), after is not None)
        values: dict[str, Any] = {"user_id": user_id}
        if title_contains:
            values["title_pattern"] = like_contains(title_contains)
        if after is not None:
            values["after_at"], values["after_id"] = after
        return list((await self.session.execute(query, values)).scalars())

    async def delete_owned(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        # Unlink the reply tree before deleting it: InnoDB cascades a self-reference at most
        # 15 levels deep, and a long conversation is a much deeper chain than that.
        owned = (Message.conversation_id == conversation_id, Message.user_id == user_id)
        await self.session.execute(update(Message).where(*owned).values(parent_id=None))
        await self.session.execute(delete(Message).where(*owned))
        result = await self.session.execute(
            delete(Conversation).where(Conversation.id == conversation_id, Conversation.user_id == user_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, message: Message) -> Message:
        self.session.add(message)
        await self.session.flush()
        return message

    async def insert_new(self, messages: list[Message]) -> None:
        """New messages (ids set) in one INSERT, in order: a reply may point at the question before it.

        A Core statement, not the unit of work: the objects stay plain data (not in the session), and
        what they leave unset gets the column's default here, on the object too, as a flush would."""
        table = _MESSAGE_TABLE
        defaults = [(column.key, column.default) for column in table.columns if column.default is not None]
        for message in messages:
            for key, default in defaults:
                if getattr(message, key) is None:
                    # A callable default takes the execution context; ours (utcnow, uuid7) ignore it.
                    setattr(message, key, default.arg(None) if default.is_callable else default.arg)  # type: ignore[attr-defined]
        rows = [{column.key: getattr(message, column.key) for column in table.columns} for message in messages]
        await self.session.execute(_INSERT_MESSAGES, rows)

    async def list_owned(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        limit: int,
        after: uuid.UUID | None = None,
    ) -> Sequence[Row[Any]]:
        """Oldest first; ids are time-ordered (uuid7), so the id alone is the keyset.

        Plain rows with the message's columns as attributes, not ORM objects: a page is only read
        and serialized, and building and tracking fifty mapped objects cost more than its query."""
        query = _message_page(limit, after is not None)
        values = {"conversation_id": conversation_id, "user_id": user_id, "after_id": after}
        return (await self.session.execute(query, values)).all()

    async def branch_owned(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> ConversationTree:
        """The reply tree's text columns, and whether each message carried files, for building a prompt
        (served by ix_message_conversation_page, and message_file's primary key for the files)."""
        rows = await self.session.execute(_BRANCH, {"conversation_id": conversation_id, "user_id": user_id})
        return ConversationTree([StoredTurn(r.id, r.parent_id, r.role, r.content, bool(r.has_files)) for r in rows])


async def finish_streaming(
    connection: AsyncConnection, message_id: uuid.UUID, user_id: uuid.UUID, values: dict[str, Any]
) -> bool:
    """The one final write of a reply; a second attempt finds no `streaming` row and changes nothing."""
    result = await connection.execute(_FINISH_STREAMING, {"finished_id": message_id, "owner_id": user_id, **values})
    return bool(result.rowcount)


@dataclass(frozen=True)
class ConversationTree:
    all: list[StoredTurn]

    @property
    def newest_id(self) -> uuid.UUID | None:
        return self.all[-1].id if self.all else None

    def get(self, message_id: uuid.UUID) -> StoredTurn | None:
        return next((m for m in self.all if m.id == message_id), None)

    def path_to(self, leaf_id: uuid.UUID | None) -> list[StoredTurn]:
        return branch(self.all, leaf_id)


# A chat turn's statements, built once: with the Core table and named parameters, executing one skips
# the ORM's compile step, and its cache key is computed once. An UPDATE without values() sets the
# columns named by the execution's parameters (the WHERE clause's own are named apart from columns).
_TURN_CONVERSATION = select(
    _CONVERSATION_TABLE.c.title,
    _CONVERSATION_TABLE.c.model,
    _CONVERSATION_TABLE.c.system_prompt,
    _CONVERSATION_TABLE.c.params,
).where(
    _CONVERSATION_TABLE.c.id == bindparam("conversation_id"),
    _CONVERSATION_TABLE.c.user_id == bindparam("user_id"),
)
_BRANCH = (
    select(
        _MESSAGE_TABLE.c.id,
        _MESSAGE_TABLE.c.parent_id,
        _MESSAGE_TABLE.c.role,
        _MESSAGE_TABLE.c.content,
        exists().where(_MESSAGE_FILE_TABLE.c.message_id == _MESSAGE_TABLE.c.id).label("has_files"),
    )
    .where(
        _MESSAGE_TABLE.c.conversation_id == bindparam("conversation_id"),
        _MESSAGE_TABLE.c.user_id == bindparam("user_id"),
    )
    .order_by(_MESSAGE_TABLE.c.id)
)
_INSERT_MESSAGES = insert(_MESSAGE_TABLE)
_TOUCH = update(_CONVERSATION_TABLE).where(
    _CONVERSATION_TABLE.c.id == bindparam("touched_id"), _CONVERSATION_TABLE.c.user_id == bindparam("owner_id")
)
_FINISH_STREAMING = update(_MESSAGE_TABLE).where(
    _MESSAGE_TABLE.c.id == bindparam("finished_id"),
    _MESSAGE_TABLE.c.user_id == bindparam("owner_id"),
    _MESSAGE_TABLE.c.status == MessageStatus.STREAMING.value,
)


# Page statements run on every list and page view: each is built once per shape (its arguments) and
# reused with new parameter values, as db.Statements keeps search's. The cache's size only keeps a
# client cycling through page sizes from growing it without end.
@functools.lru_cache(maxsize=256)
def _conversation_page(limit: int, archived: bool, pinned: bool | None, titled: bool, paged: bool) -> Any:
    """Parameters: user_id; title_pattern when `titled`; after_at and after_id when `paged`."""
    # IS TRUE / IS FALSE take no parameter: archived and pinned are part of the shape.
    query = select(Conversation).where(
        Conversation.user_id == bindparam("user_id"), Conversation.archived.is_(archived)
    )
    if pinned is not None:
        query = query.where(Conversation.pinned.is_(pinned))
    if titled:
        query = query.where(Conversation.title.ilike(bindparam("title_pattern", type_=String), escape="\\"))
    if paged:
        at: ColumnElement[Any] = bindparam("after_at")
        last_id: ColumnElement[Any] = bindparam("after_id")
        query = query.where(
            # Redundant with the OR below, but a range the index can seek to: without it the
            # database walks every row of the earlier pages (7.8 ms instead of 0.5 ms on page 100).
            Conversation.last_activity_at <= at,
            or_(
                Conversation.last_activity_at < at,
                and_(Conversation.last_activity_at == at, Conversation.id < last_id),
            ),
        )
    return query.order_by(Conversation.last_activity_at.desc(), Conversation.id.desc()).limit(limit)


@functools.lru_cache(maxsize=256)
def _message_page(limit: int, paged: bool) -> Any:
    """Parameters: conversation_id, user_id; after_id when `paged`."""
    table = _MESSAGE_TABLE
    query = select(table).where(
        table.c.conversation_id == bindparam("conversation_id"), table.c.user_id == bindparam("user_id")
    )
    if paged:
        query = query.where(table.c.id > bindparam("after_id"))
    return query.order_by(table.c.id).limit(limit)
