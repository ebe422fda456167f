"""Files tests run the whole app (every backend) with a small upload limit and the fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bench.fake_upstream import FakeUpstream
from chatstudio.config import Settings
from chatstudio.files.models import MessageFile, StoredFile
from tests.conftest import Backend, SignedIn, make_settings, running_app

LIMIT = 64 * 1024
PROVIDER_KEY = "sk-test-files-provider-key"
Files = tuple[httpx.AsyncClient, Any]


@pytest.fixture(scope="session")
def files_upstream() -> Iterator[str]:
    with FakeUpstream() as base_url:
        yield base_url


def files_settings(database_url: str, upstream: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "max_upload_size": LIMIT,
        "openai_api_key": PROVIDER_KEY,
        "openai_base_url": f"{upstream}/v1",
        "anthropic_api_key": PROVIDER_KEY,
        "anthropic_base_url": upstream,
        "default_model": "openai/gpt-test",
        "provider_max_retries": 0,
        "provider_read_timeout": 5,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
async def files(backend: Backend, files_upstream: str, tmp_path: Path) -> AsyncIterator[Files]:
    async with running_app(files_settings(backend.url, files_upstream, tmp_path), wipe=True) as (client, app):
        yield client, app


def upload_dir(app: Any) -> Path:
    settings: Settings = app.state.settings
    return Path(settings.upload_dir or settings.data_dir / "uploads")


def stored_paths(app: Any) -> list[Path]:
    """Every file under UPLOAD_DIR, spool included: after a refusal this must be empty."""
    root = upload_dir(app)
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


async def count_rows(app: Any, model: type[Any] = StoredFile) -> int:
    async with app.state.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def count_links(app: Any) -> int:
    return await count_rows(app, MessageFile)


async def upload(
    client: httpx.AsyncClient, user: SignedIn, name: str, data: bytes, content_type: str = "application/octet-stream"
) -> httpx.Response:
    return await client.post("/api/v1/files", headers=user.headers, files={"file": (name, data, content_type)})


async def assert_nothing_stored(app: Any) -> None:
    assert await count_rows(app) == 0
    assert stored_paths(app) == []
