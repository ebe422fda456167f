"""The pool trusts a connection in steady use and tests one that sat idle: a connection the database
dropped while it was idle is replaced before any request sees it."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from chatstudio import db
from tests.conftest import Backend

_PID = {"postgres": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
_KILL = {"postgres": "SELECT pg_terminate_backend({pid})", "mysql": "KILL {pid}"}


async def _kill(url: str, backend: str, pid: int) -> None:
    killer = db.create_engine(url, pooled=False)
    try:
        async with killer.connect() as connection:
            await connection.execute(text(_KILL[backend].format(pid=int(pid))))
    finally:
        await killer.dispose()


async def test_a_connection_dropped_while_idle_is_replaced(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend.name == "sqlite":
        pytest.skip("a SQLite file has no server to drop the connection")
    engine = db.create_engine(backend.url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            first = await connection.scalar(text(_PID[backend.name]))
        await _kill(backend.url, backend.name, first)
        monkeypatch.setattr(db, "IDLE_PING_AFTER", 0.0)  # it has now been idle "long enough"
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
            second = await connection.scalar(text(_PID[backend.name]))
        assert second != first
    finally:
        await engine.dispose()


async def test_a_connection_in_steady_use_is_not_pinged(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = db.create_engine(backend.url, pool_size=1, max_overflow=0)
    pings: list[object] = []
    original = engine.dialect.do_ping

    def counting_ping(connection: object) -> bool:
        pings.append(connection)
        return bool(original(connection))  # type: ignore[arg-type]

    monkeypatch.setattr(engine.dialect, "do_ping", counting_ping)
    try:
        for _ in range(3):
            async with engine.connect() as connection:
                assert await connection.scalar(text("SELECT 1")) == 1
        assert pings == []
        monkeypatch.setattr(db, "IDLE_PING_AFTER", 0.0)
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
        assert len(pings) == (0 if backend.name == "sqlite" else 1)
    finally:
        await engine.dispose()


async def test_postgresql_connections_may_prefetch_heap_pages(backend: Backend) -> None:
    if backend.name != "postgres":
        pytest.skip("effective_io_concurrency is PostgreSQL's")
    engine = db.create_engine(backend.url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            version = str(await connection.scalar(text("SELECT version()")))
            setting = await connection.scalar(text("SHOW effective_io_concurrency"))
            # The pool's reset on return (a rollback) must not undo it for the next checkout.
        async with engine.connect() as connection:
            again = await connection.scalar(text("SHOW effective_io_concurrency"))
    finally:
        await engine.dispose()
    expected = str(db.IO_CONCURRENCY) if "linux" in version.lower() else setting
    assert setting == again == expected


async def test_a_lone_read_outside_a_transaction_leaves_the_next_unit_of_work_atomic(backend: Backend) -> None:
    """db.outside_transaction (the sign-in look-up of every request): on PostgreSQL its statements commit
    on their own; the connection it used is transactional again for whoever checks it out next."""
    engine = db.create_engine(backend.url, pool_size=1, max_overflow=0)
    sessions = db.create_sessionmaker(engine)
    table = "outside_transaction_probe"
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await connection.execute(text(f"CREATE TABLE {table} (n INTEGER)"))
        async with sessions() as session:
            await db.outside_transaction(session)
            await session.execute(text(f"INSERT INTO {table} VALUES (1)"))
            await session.rollback()
        async with sessions() as session:  # the same pooled connection (pool_size=1)
            await session.execute(text(f"INSERT INTO {table} VALUES (2)"))
            await session.rollback()
        async with sessions() as session:
            await session.execute(text(f"INSERT INTO {table} VALUES (3)"))
            await db.outside_transaction(session)  # a unit of work already begun is left as it is
            await session.rollback()
        async with engine.connect() as connection:
            kept = list((await connection.execute(text(f"SELECT n FROM {table}"))).scalars())
        assert kept == ([1] if backend.name == "postgres" else [])
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await engine.dispose()
