from __future__ import annotations

from typing import Any

import httpx
import pytest

from chatstudio import __version__
from chatstudio.config import Settings
from tests.conftest import make_settings, running_app


async def test_liveness_shows_version(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}


async def test_readiness_checks_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok"}


async def _ready(settings: Settings) -> httpx.Response:
    async with running_app(settings) as (http, _):
        return await http.get("/health/ready")


async def test_readiness_names_the_failing_database(tmp_path: Any) -> None:
    # A directory cannot be opened as a SQLite file: the database check fails, liveness does not.
    broken = tmp_path / "not-a-file.db"
    broken.mkdir()
    settings = make_settings(f"sqlite+aiosqlite:///{broken}", data_dir=tmp_path)
    response = await _ready(settings)
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"].startswith("error")
    assert body["error"]["code"] == "not_ready"
    assert "database" in body["error"]["message"]


@pytest.mark.redis
async def test_readiness_checks_redis_when_configured(redis_url: str, tmp_path: Any) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/r.db", data_dir=tmp_path, redis_url=redis_url)
    response = await _ready(settings)
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.redis
async def test_readiness_fails_when_redis_is_unreachable(tmp_path: Any) -> None:
    # Port 1 on loopback refuses connections: a stand-in for a Redis that went away.
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/r.db", data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0"
    )
    response = await _ready(settings)
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["redis"] != "ok"
    assert "redis" in response.json()["error"]["message"]
