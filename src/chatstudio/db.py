"""Declarative base, column helpers and engine/session factories shared by every domain."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import MetaData, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.types import DateTime, TypeDecorator

from chatstudio.errors import AppError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


StatementT = TypeVar("StatementT")

_uuid7_state = {"millis": 0, "counter": 0}


def uuid7() -> uuid.UUID:
    """Time-ordered UUID (RFC 9562 v7) with a 12-bit counter, monotonic within this process.

    Ids sort by creation, so keyset pages need no tie-breaker and a reply always sorts after
    the message it answers, even when both were made in the same millisecond.
    """
    millis = time.time_ns() // 1_000_000
    state = _uuid7_state
    if millis <= state["millis"]:
        millis = state["millis"]
        counter = state["counter"] + 1
        if counter > 0xFFF:
            millis += 1
            counter = 0
    else:
        counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # leave headroom to count up
    state["millis"], state["counter"] = millis, counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = ((millis & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


class Statements(Generic[StatementT]):
    """Statements built once per shape and reused with new parameter values.

    Building a SQLAlchemy statement and its cache key can cost more than running it (a search's:
    ~4 ms of CPU). A statement kept here must take every value that differs between calls as a
    named parameter; its shape is what else it depends on, for builders whose arguments are not
    the shape themselves (where they are, `functools.lru_cache` on the builder does the same). The cap
    only keeps an unusual mix of shapes (a client cycling through page sizes) from growing it
    without end; one per process, like SQLAlchemy's own compiled cache."""

    def __init__(self, cap: int = 256) -> None:
        self._built: dict[Hashable, StatementT] = {}
        self._cap = cap

    def get(self, shape: Hashable, build: Callable[[], StatementT]) -> StatementT:
        statement = self._built.get(shape)
        if statement is None:
            if len(self._built) >= self._cap:
                self._built.clear()
            statement = self._built[shape] = build()
        return statement


def like_contains(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with its own % and _ taken literally (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on every backend.

    SQLite and MySQL have no zone-aware type, so values are stored as naive UTC there and
    re-tagged on the way out. MySQL gets microseconds (DATETIME(6)) so ordering stays exact.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name != "postgresql":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 30,
    echo: bool = False,
    pooled: bool = True,
) -> AsyncEngine:
    """`pooled=False` for one-shot tools (migrations, CLI): each connection closes on release."""
    if url.startswith("sqlite"):
        return _create_sqlite_engine(url, echo=echo, pooled=pooled)
    if not pooled:
        return create_async_engine(url, poolclass=NullPool, echo=echo)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        echo=echo,
    )
    _ping_when_idle(engine)
    if engine.dialect.name == "postgresql":
        _prefetch_heap_reads(engine)
    return engine


# How many heap pages a bitmap scan may ask the kernel for ahead of reading them. PostgreSQL's
# default (1; 16 from version 18) reads one page at a time: a search for a word found in 5,000
# messages whose pages are not cached waited 150-970 ms on disk reads, 30-100 ms with this.
IO_CONCURRENCY = 64


def _prefetch_heap_reads(engine: AsyncEngine) -> None:
    """Raise effective_io_concurrency on each new connection, where the server can prefetch: it needs
    posix_fadvise (Linux; not macOS or Windows, where setting it is an error)."""

    async def configure(connection: Any) -> None:
        version = str(await connection.fetchval("SELECT version()"))
        if "linux" in version.lower():
            await connection.execute(f"SET effective_io_concurrency = {IO_CONCURRENCY}")

    @event.listens_for(engine.sync_engine, "connect")
    def _connected(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(configure)


# A connection back in use within this many seconds is trusted without a ping.
IDLE_PING_AFTER = 10.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Test a pooled connection before use only when it sat idle, where a database restart or a
    firewall's idle cut would have left it dead. SQLAlchemy's pool_pre_ping would pay that round
    trip on every checkout (three per chat turn); a connection that dies while in steady use fails
    its request instead, and the pool then replaces every connection older than the failure."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the driver's own error type, whatever the backend
            raise DisconnectionError("a pooled connection died while idle") from exc


def _create_sqlite_engine(url: str, *, echo: bool, pooled: bool) -> AsyncEngine:
    in_memory = url.endswith(":memory:") or url.rstrip("/").endswith("sqlite+aiosqlite:")
    if not in_memory:
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": {"timeout": 30}}
    if in_memory:
        kwargs["poolclass"] = StaticPool
    elif not pooled:
        kwargs["poolclass"] = NullPool
    engine = create_async_engine(url, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def outside_transaction(session: AsyncSession) -> None:
    """On PostgreSQL, let a fresh session's statements run outside a transaction until it next commits
    or rolls back: a lone read then costs one round trip instead of three (BEGIN, the read, COMMIT).
    For a look-up that stands alone, made before the request's own unit of work. asyncpg switches
    autocommit on the client, and the pool restores the connection's setting when the commit hands
    it back; MySQL drivers pay a statement for each switch, and SQLite's reads cost no round trip."""
    if session.in_transaction() or session.get_bind().dialect.name != "postgresql":
        return
    await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


@asynccontextmanager
async def autocommit_connection(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncConnection]:
    """A connection (of the factory's engine) whose every statement commits by itself: a lone write
    costs one round trip, with no BEGIN and COMMIT around it. Core statements only, and no Session
    around them: for one statement, its bookkeeping costs more than the statement. Only for work
    that is one statement, or whose statements need not commit together."""
    engine: AsyncEngine = factory.kw["bind"]
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


@asynccontextmanager
async def session_scope(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit when the body succeeds, roll back when it raises."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except AppError as exc:
            # Some refusals are also actions (revoking a session on refresh-token reuse) and
            # must be stored even though the request fails.
            await (session.commit() if exc.keeps_changes else session.rollback())
            raise
        except BaseException:
            await session.rollback()
            raise
