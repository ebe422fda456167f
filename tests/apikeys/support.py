"""Helpers shared by the API-key, /v1, usage and idempotency tests: the app against the fake upstream
(with a price table), keys, the official SDK over ASGI, and a spy that counts provider calls."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import uvicorn

from bench.fake_upstream import FakeUpstream
from tests.chat.conftest import chat_settings
from tests.conftest import Backend, SignedIn, running_app

# USD per million tokens.
PRICES = {"openai/gpt-test": {"input": 1.0, "output": 2.0}, "steady/*": {"input": 0.5, "output": 0.5}}
Studio = tuple[httpx.AsyncClient, Any]


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    with FakeUpstream() as base_url:
        yield base_url


@pytest.fixture
async def studio(backend: Backend, fake_upstream: str, tmp_path: Path) -> AsyncIterator[Studio]:
    # The ledger's own flushes would race the tests' assertions on what is still buffered.
    settings = chat_settings(backend.url, fake_upstream, tmp_path, model_prices=PRICES, usage_flush_interval=300)
    async with running_app(settings, wipe=True) as (client, app):
        yield client, app


async def create_key(client: httpx.AsyncClient, user: SignedIn, **body: Any) -> str:
    body.setdefault("name", "test key")
    response = await client.post("/api/v1/api-keys", headers=user.headers, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sdk(app: Any, key: str) -> openai.AsyncOpenAI:
    """The official async client, talking to the app in process (retries off: errors answer at once)."""
    transport = httpx2.ASGITransport(app=app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://testserver")
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0, http_client=http)


@dataclass
class CallCounter:
    calls: int = 0
    requests: list[Any] = field(default_factory=list)


def count_provider_calls(app: Any) -> CallCounter:
    """Counts (and keeps) the calls into the registry (chat turns and /v1 both go through it);
    behaviour is unchanged."""
    registry = app.state.registry
    original = registry.stream
    counter = CallCounter()

    def stream(model_id: str, request: Any) -> Any:
        counter.calls += 1
        counter.requests.append(request)
        return original(model_id, request)

    registry.stream = stream
    return counter


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app under a real uvicorn on loopback, in a thread (for the synchronous SDK client)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:  # a thread's readiness: nothing to await from here
            assert thread.is_alive(), "the server stopped while starting"
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
