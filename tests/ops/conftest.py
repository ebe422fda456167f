"""Operations tests: one migrated SQLite file per session (wiped after each test), the fake upstream,
and helpers to read Prometheus samples."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from bench.fake_upstream import FakeUpstream
from chatstudio.config import Settings
from tests.chat.conftest import chat_settings
from tests.conftest import running_app


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    with FakeUpstream() as base_url:
        yield base_url


@pytest.fixture(scope="session")
def ops_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    from chatstudio import migrate

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ops') / 'ops.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def ops_settings(ops_db: str, fake_upstream: str, tmp_path: Path) -> Settings:
    return chat_settings(ops_db, fake_upstream, tmp_path)


@asynccontextmanager
async def ops_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with running_app(settings, wipe=True) as (client, app):
        yield client, app


def sample(name: str, **labels: str) -> float:
    """A sample of the default registry; 0 when the series does not exist yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
