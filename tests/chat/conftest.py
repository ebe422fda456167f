"""Chat turns run against the fake upstream: real wire protocols on loopback, knobs per endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from chatstudio.config import Settings
from tests.conftest import Backend, make_settings, running_app

PROVIDER_KEY = "sk-test-provider-key-DO-NOT-LEAK-7f3a"


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    with FakeUpstream() as base_url:
        yield base_url


def chat_settings(database_url: str, upstream: str, data_dir: Path, **overrides: Any) -> Settings:
    """`openai/<any>` answers 16 tokens; named endpoints misbehave in one way each."""

    def endpoint(name: str, knobs: str) -> dict[str, str]:
        return {"name": name, "base_url": f"{upstream}/k/{knobs}/v1"}

    values: dict[str, Any] = {
        "data_dir": data_dir,
        "openai_api_key": PROVIDER_KEY,
        "openai_base_url": f"{upstream}/v1",
        "default_model": "openai/gpt-test",
        "provider_max_retries": 0,
        "provider_read_timeout": 5,
        "openai_compatible_endpoints": [
            endpoint("slow", "tokens=200,delay_ms=20"),
            endpoint("steady", "tokens=30,delay_ms=2"),
            endpoint("broken", "fail=500"),
            endpoint("denied", "fail=401"),
            endpoint("busy", "fail=429,retry_after=7"),
            endpoint("cut", "cut_after=3"),
            endpoint("toolong", "context_too_long"),
        ],
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
async def chat(backend: Backend, fake_upstream: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with running_app(chat_settings(backend.url, fake_upstream, tmp_path), wipe=True) as (client, app):
        yield client, app
