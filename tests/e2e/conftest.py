"""End-to-end fixtures: the real `chatstudio serve --migrate` in a subprocess on loopback.

The server talks to the fake upstream (a background thread in this process) through the same
environment variables an operator sets; the tests talk to the server with httpx and websockets.
Nothing here waits on a clock except bounded polling of the separate server process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.conftest import STRONG_PASSWORD
from tests.helpers_proc import ServerProcess, clean_env, running_server

E2E_SECRET_KEY = "e2e-Secret-key-9f2Qx7Lm2-Xv9Rt4_Kp8Zw3Ny6Bc1Hd5Fg0Js"
PROVIDER_KEY = "sk-e2e-provider-key-DO-NOT-LEAK-41c9"
ALLOWED_ORIGIN = "https://chat.example.com"

FAST_TOKENS = 16  # the fake upstream's default, answered by DEFAULT_MODEL (openai/...)
FAST_MODEL = "openai/gpt-test"
SLOW_TOKENS = 200
SLOW_MODEL = "slow/gpt-test"
MEDIUM_TOKENS = 80
MEDIUM_MODEL = "medium/gpt-test"
LONG_TOKENS = 2000
LONG_MODEL = "long/gpt-test"
ENDPOINT_KNOBS = {
    "slow": f"tokens={SLOW_TOKENS},delay_ms=20",
    "medium": f"tokens={MEDIUM_TOKENS},delay_ms=20",
    "long": f"tokens={LONG_TOKENS},delay_ms=10",
}

# Guards against a hung test, never assertions about speed.
POLL_DEADLINE_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.1
CLIENT_TIMEOUT_SECONDS = 30.0


def server_env(upstream: str, work: Path, **extra: str) -> dict[str, str]:
    """A clean environment for one server: its own SQLite file and data dir, the fake upstream's endpoints."""
    endpoints = [{"name": name, "base_url": f"{upstream}/k/{knobs}/v1"} for name, knobs in ENDPOINT_KNOBS.items()]
    values = {
        "DEBUG": "false",
        "SECRET_KEY": E2E_SECRET_KEY,
        "DATA_DIR": str(work / "data"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{work / 'e2e.db'}",
        "LOG_LEVEL": "info",
        "LOCAL_MODEL_ENABLED": "false",
        "OPENAI_API_KEY": PROVIDER_KEY,
        "OPENAI_BASE_URL": f"{upstream}/v1",
        "OPENAI_COMPATIBLE_ENDPOINTS": json.dumps(endpoints),
        "DEFAULT_MODEL": FAST_MODEL,
        "PROVIDER_MAX_RETRIES": "0",
        "SHUTDOWN_GRACE_SECONDS": "1",
        "ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        # The general per-user limit is not under test here; polling must not trip it.
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "1000000",
    }
    values.update(extra)
    return clean_env(**values)


@contextmanager
def e2e_server(upstream: str, work: Path, **extra: str) -> Iterator[ServerProcess]:
    """`chatstudio serve --migrate` on a free port, up and answering; stopped (SIGTERM, then SIGKILL) on exit."""
    with running_server("--migrate", cwd=work, env=server_env(upstream, work, **extra)) as server:
        server.wait_until_up("/health")
        yield server


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    with FakeUpstream() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def server(fake_upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module; every test signs up its own users, so tests never share rows."""
    with e2e_server(fake_upstream, tmp_path_factory.mktemp("e2e")) as process:
        yield process


def http_client(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.base_url, timeout=CLIENT_TIMEOUT_SECONDS, trust_env=False)


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(server) as http:
        yield http


# accounts and conversations


@dataclass(frozen=True)
class Account:
    email: str
    access_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@pytest.fixture(scope="module")
async def accounts(server: ServerProcess) -> tuple[Account, Account]:
    """Two accounts per server: sign-up and sign-in are limited per client IP (all tests come from
    127.0.0.1), so tests share these and keep apart by making their own conversations."""
    async with http_client(server) as http:
        return await sign_up(http), await sign_up(http)


@pytest.fixture
def account(accounts: tuple[Account, Account]) -> Account:
    return accounts[0]


@pytest.fixture
def other_account(accounts: tuple[Account, Account]) -> Account:
    return accounts[1]


_accounts = 0


async def sign_up(client: httpx.AsyncClient) -> Account:
    global _accounts
    _accounts += 1
    email = f"e2e-{_accounts}-{time.monotonic_ns()}@example.com"
    body = {"email": email, "password": STRONG_PASSWORD}
    created = await client.post("/api/v1/auth/register", json=body)
    assert created.status_code == 201, created.text
    tokens = await client.post("/api/v1/auth/login", json=body)
    assert tokens.status_code == 200, tokens.text
    return Account(email, tokens.json()["access_token"])


async def new_conversation(client: httpx.AsyncClient, account: Account) -> str:
    response = await client.post("/api/v1/conversations", json={}, headers=account.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def list_messages(client: httpx.AsyncClient, account: Account, conversation_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/conversations/{conversation_id}/messages", headers=account.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None  # every test conversation fits one page
    return cast(list[dict[str, Any]], body["items"])


async def assistant_messages(client: httpx.AsyncClient, account: Account, conversation_id: str) -> list[dict[str, Any]]:
    return [m for m in await list_messages(client, account, conversation_id) if m["role"] == "assistant"]


async def get_message(
    client: httpx.AsyncClient, account: Account, conversation_id: str, message_id: str
) -> dict[str, Any]:
    found = [m for m in await list_messages(client, account, conversation_id) if m["id"] == message_id]
    assert len(found) == 1, f"message {message_id} not listed exactly once: {found}"
    return found[0]


async def wait_until_settled(
    client: httpx.AsyncClient, account: Account, conversation_id: str, message_id: str
) -> dict[str, Any]:
    """Poll the (separate) server until the reply leaves `streaming`; bounded, never a timing assertion."""
    end = time.monotonic() + POLL_DEADLINE_SECONDS
    while True:
        message = await get_message(client, account, conversation_id, message_id)
        if message["status"] != "streaming":
            return message
        if time.monotonic() > end:
            raise AssertionError(f"reply {message_id} still streaming after {POLL_DEADLINE_SECONDS} s: {message}")
        await asyncio.sleep(POLL_INTERVAL_SECONDS)


# server-sent events


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: dict[str, Any]


class SSEReader:
    """Parses `event:` / `data:` lines into events; an event ends at a blank line (the SSE rules)."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = cast(AsyncGenerator[str, None], response.aiter_lines())

    async def next(self) -> SSEEvent | None:
        """The next event, or None once the server ended the stream."""
        name: str | None = None
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if data:
                    return SSEEvent(name or "message", json.loads("\n".join(data)))
                name = None
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        assert not data, f"the stream ended inside an event: {name} {data}"
        return None

    async def expect(self, name: str) -> dict[str, Any]:
        event = await self.next()
        assert event is not None, f"the stream ended before a {name!r} event"
        assert event.event == name, event
        return event.data

    async def rest(self) -> list[SSEEvent]:
        """Every remaining event, up to the end of the stream."""
        events: list[SSEEvent] = []
        while (event := await self.next()) is not None:
            events.append(event)
        return events

    async def aclose(self) -> None:
        await self._lines.aclose()


@asynccontextmanager
async def stream_turn(
    client: httpx.AsyncClient,
    account: Account,
    conversation_id: str,
    *,
    model: str | None = None,
    content: str = "Tell me something.",
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> AsyncIterator[SSEReader]:
    """POST a turn and read its reply as SSE; leaving the block closes the connection."""
    payload: dict[str, Any] = body if body is not None else {"content": content, "stream": True}
    if model is not None:
        payload["model"] = model
    async with client.stream(
        "POST",
        f"/api/v1/conversations/{conversation_id}/messages",
        json=payload,
        headers={**account.headers, **(headers or {})},
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"{response.status_code}: {response.text}")
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(response)
        try:
            yield reader
        finally:
            await reader.aclose()


def split_reply(events: list[SSEEvent]) -> tuple[list[str], SSEEvent]:
    """Delta texts and the final event; nothing may follow the final event."""
    assert events, "the stream ended without a final event"
    *deltas, final = events
    assert all(e.event == "delta" for e in deltas), [e.event for e in deltas]
    assert final.event in ("done", "error"), final
    return [str(e.data["text"]) for e in deltas], final
