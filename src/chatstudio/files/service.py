"""File rules: what may be uploaded, ownership, paging, deletion. Flushes, never commits."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.config import Settings
from chatstudio.db import uuid7
from chatstudio.errors import NotFound
from chatstudio.files.errors import FileNotFound
from chatstudio.files.extract import Limits, examine
from chatstudio.files.models import StoredFile
from chatstudio.files.repository import FileRepository
from chatstudio.files.sniff import file_type_for
from chatstudio.files.storage import FileStore
from chatstudio.files.upload import SpooledUpload, extension_of
from chatstudio.pagination import decode_cursor, encode_cursor


class MessageNotFound(NotFound):
    code = "message_not_found"
    default_message = "The message was not found."


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    allowed_extensions: tuple[str, ...]
    max_upload_size: int
    limits: Limits

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPolicy:
        return cls(
            tuple(settings.allowed_extensions),
            settings.max_upload_size,
            Limits(settings.max_image_pixels, settings.max_docx_uncompressed_size),
        )


class FileService:
    def __init__(self, session: AsyncSession, store: FileStore, policy: UploadPolicy) -> None:
        self.files = FileRepository(session)
        self.store = store
        self.policy = policy

    async def create(self, user_id: uuid.UUID, upload: SpooledUpload) -> StoredFile:
        """Check the spooled upload, put it in place under a new id, record it. Refusals store nothing."""
        extension = extension_of(upload.filename)
        file_type = file_type_for(extension, list(self.policy.allowed_extensions))
        examined = await asyncio.to_thread(examine, upload.path, extension, file_type, self.policy.limits)
        stored = StoredFile(
            id=uuid7(),
            user_id=user_id,
            filename=upload.filename,
            extension=extension,
            kind=file_type.kind.value,
            media_type=file_type.media_type,
            size_bytes=upload.size,
            sha256=upload.sha256,
            text_chars=None if examined.text is None else len(examined.text),
            width=examined.width,
            height=examined.height,
        )
        try:
            await asyncio.to_thread(self.store.put, upload.path, stored.id, examined.text)
            await self.files.add(stored)
        except BaseException:
            self.store.remove(stored.id)
            raise
        return stored

    async def get(self, user_id: uuid.UUID, file_id: uuid.UUID) -> StoredFile:
        """Another user's file is indistinguishable from a missing one."""
        stored = await self.files.get_owned(file_id, user_id)
        if stored is None:
            raise FileNotFound()
        return stored

    async def list_page(
        self, user_id: uuid.UUID, *, limit: int, cursor: str | None, message_id: uuid.UUID | None
    ) -> tuple[list[StoredFile], str | None]:
        if message_id is not None:
            # A message's attachments: one short list, in the order they were attached.
            if not await self.files.message_owned(message_id, user_id):
                raise MessageNotFound()
            return [stored for _, stored in await self.files.linked_to([message_id], user_id)], None
        before = decode_cursor(cursor, uuid.UUID)[0] if cursor else None
        rows = await self.files.list_owned(user_id, limit=limit + 1, before=before)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].id)
        return rows, next_cursor

    async def delete(self, user_id: uuid.UUID, file_id: uuid.UUID) -> None:
        """Removes the record; the caller removes the bytes (`store.remove`) once that is committed."""
        if not await self.files.delete_owned(file_id, user_id):
            raise FileNotFound()
