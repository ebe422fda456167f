"""The migrations are the schema: they build it on every backend, go down and up again, and leave
nothing the models define unmigrated."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from chatstudio import migrate
from chatstudio.db import Base, create_engine
from tests.conftest import Backend


async def _inspect(url: str, fn: Any) -> Any:
    engine = create_engine(url, pooled=False)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _not_full_text(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    # The full-text indexes and SQLite's FTS5 tables (0002) and PostgreSQL's BRIN index for the
    # relevance window (0006) live in the migrations only.
    return "_fts" not in (name or "") and name != "ix_message_id_brin"


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": _not_full_text})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Any) -> set[str]:
    return set(inspect(connection).get_table_names())


def test_models_match_migrations(backend: Backend) -> None:
    assert asyncio.run(_inspect(backend.url, _diff)) == []


def test_downgrade_to_base_and_back(backend: Backend) -> None:
    try:
        migrate.downgrade(backend.url, "base")
        assert asyncio.run(_inspect(backend.url, _tables)) <= {"alembic_version"}
    finally:
        migrate.upgrade(backend.url)
    assert {"user_account", "conversation", "message"} <= asyncio.run(_inspect(backend.url, _tables))


def test_one_linear_history() -> None:
    assert len(migrate.current_heads()) == 1
