from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from chatstudio.db import Base, UTCDateTime, utcnow, uuid7

# MySQL's TEXT holds 64 KB; a long completion kept for an idempotent replay can be more.
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


class UsageEvent(Base):
    """One model call (a chat turn or a /v1 request). Rows older than USAGE_DETAIL_RETENTION_DAYS are
    folded into `usage_daily` and deleted, so the table stays bounded."""

    __tablename__ = "usage_event"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_key.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(String(10))  # chat | api
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))  # provider/model as requested (aliases resolved)
    status: Mapped[str] = mapped_column(String(20))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    # Billionths of a dollar: exact integer sums on every backend (SQLite has no decimal type).
    cost_nanousd: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    # The calendar day in TIMEZONE, fixed when the call is recorded, so every backend groups alike.
    day: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_usage_event_user_day", "user_id", "day"),
        Index("ix_usage_event_day", "day"),
        Index("ix_usage_event_created_at", "created_at"),
    )


class UsageDaily(Base):
    """Daily totals of rolled-up events. A (day, user, key, model) group may have more than one row
    when two instances rolled up at once; every reader sums, so that is harmless."""

    __tablename__ = "usage_daily"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid7)
    day: Mapped[date] = mapped_column(Date)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_key.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(String(10))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    requests: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_nanousd: Mapped[int] = mapped_column(BigInteger)
    latency_ms_sum: Mapped[int] = mapped_column(BigInteger)
    ttft_ms_sum: Mapped[int] = mapped_column(BigInteger)
    ttft_count: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_usage_daily_user_day", "user_id", "day"),
        Index("ix_usage_daily_day", "day"),
    )


class IdempotencyKey(Base):
    """An `Idempotency-Key` a user sent, with the request it named and, once done, the result to replay."""

    __tablename__ = "idempotency_key"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))  # pending | done
    # Bumped whenever a new attempt takes the row over, so a late finisher cannot overwrite it.
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(LongText)
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    __table_args__ = (UniqueConstraint("user_id", "scope", "key"),)
