from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from chatstudio.db import Base, UTCDateTime, utcnow, uuid7


class ApiKey(Base):
    """The key itself is never stored: only its SHA-256 (it is 256 random bits, so a fast hash keeps the
    stored value useless) and a short visible prefix that lets its owner recognise it."""

    __tablename__ = "api_key"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Space-separated scope tokens ("chat read"), as in OAuth.
    scopes: Mapped[str] = mapped_column(String(200), default="chat")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Revoked keys stay as rows so the usage they made keeps its attribution.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_api_key_user_list", "user_id", "id"),)

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()
