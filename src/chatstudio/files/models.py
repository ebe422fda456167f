from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from chatstudio.db import Base, UTCDateTime, utcnow, uuid7


class FileKind(StrEnum):
    TEXT = "text"
    PDF = "pdf"
    DOCX = "docx"
    DOC = "doc"
    IMAGE = "image"


class StoredFile(Base):
    """One upload. The bytes live in UPLOAD_DIR under `id.hex`; `filename` is the client's, metadata only."""

    __tablename__ = "uploaded_file"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    extension: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    # Derived from the sniffed content, never taken from the client.
    media_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Characters of extracted text (kept beside the bytes as `id.hex.txt`); None for images.
    text_chars: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_uploaded_file_user_page", "user_id", "id"),)


class MessageFile(Base):
    """Which files a user message carried, in the order they were attached."""

    __tablename__ = "message_file"

    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("uploaded_file.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)

    # Deleting a file cascades here; without an index on file_id that is a scan of the whole table.
    __table_args__ = (Index("ix_message_file_file_id", "file_id"),)
