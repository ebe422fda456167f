"""Every SQL statement about uploaded files and their links to messages. Each one filters by owner."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.chat.models import Message
from chatstudio.files.models import MessageFile, StoredFile


class FileRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, stored: StoredFile) -> StoredFile:
        self.session.add(stored)
        await self.session.flush()
        return stored

    async def get_owned(self, file_id: uuid.UUID, user_id: uuid.UUID) -> StoredFile | None:
        result = await self.session.execute(
            select(StoredFile).where(StoredFile.id == file_id, StoredFile.user_id == user_id)
        )
        return result.scalar_one_or_none()

    async def get_many_owned(self, file_ids: Sequence[uuid.UUID], user_id: uuid.UUID) -> list[StoredFile]:
        if not file_ids:
            return []
        result = await self.session.execute(
            select(StoredFile).where(StoredFile.id.in_(list(file_ids)), StoredFile.user_id == user_id)
        )
        return list(result.scalars())

    async def list_owned(self, user_id: uuid.UUID, *, limit: int, before: uuid.UUID | None = None) -> list[StoredFile]:
        """Newest first; ids are time-ordered (uuid7), so the id alone is the keyset (ix_uploaded_file_user_page)."""
        query = select(StoredFile).where(StoredFile.user_id == user_id)
        if before is not None:
            query = query.where(StoredFile.id < before)
        query = query.order_by(StoredFile.id.desc()).limit(limit)
        return list((await self.session.execute(query)).scalars())

    async def delete_owned(self, file_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        """Its message links go with it (ON DELETE CASCADE); the messages themselves stay."""
        result = await self.session.execute(
            delete(StoredFile).where(StoredFile.id == file_id, StoredFile.user_id == user_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # links to messages

    async def link(self, message_id: uuid.UUID, file_ids: Sequence[uuid.UUID]) -> None:
        self.session.add_all(
            MessageFile(message_id=message_id, file_id=file_id, position=index)
            for index, file_id in enumerate(file_ids)
        )
        await self.session.flush()

    async def message_owned(self, message_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        found = await self.session.scalar(
            select(Message.id).where(Message.id == message_id, Message.user_id == user_id)
        )
        return found is not None

    async def linked_to(
        self, message_ids: Sequence[uuid.UUID], user_id: uuid.UUID
    ) -> list[tuple[uuid.UUID, StoredFile]]:
        """(message id, file) for the owner's files attached to these messages, in attachment order."""
        if not message_ids:
            return []
        rows = await self.session.execute(
            select(MessageFile.message_id, StoredFile)
            .join(StoredFile, StoredFile.id == MessageFile.file_id)
            .where(MessageFile.message_id.in_(list(message_ids)), StoredFile.user_id == user_id)
            .order_by(MessageFile.message_id, MessageFile.position)
        )
        return [(row[0], row[1]) for row in rows]
