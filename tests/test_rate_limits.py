"""Rate limits under attack: floods, spoofed addresses, password guessing, lockout attempts, and a
Redis that dies mid-test (a private redis-server on its own port, so the shared one is untouched)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatstudio.main import create_app
from chatstudio.ratelimit import FallbackLimiter
from tests.conftest import STRONG_PASSWORD, make_settings, services_required


@asynccontextmanager
async def edge(
    tmp_path: Path, peer: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    db = tmp_path / "rl.db"
    settings = make_settings(f"sqlite+aiosqlite:///{db}", data_dir=tmp_path, **overrides)
    if not db.exists():
        from chatstudio import migrate

        await asyncio.to_thread(migrate.upgrade, settings.database_url)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=(peer, 1234))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client, app


async def test_general_limit_per_client(tmp_path: Path) -> None:
    async with edge(tmp_path, rate_limit_per_minute=3) as (client, _):
        answers = [await client.get("/api/v1/conversations") for _ in range(4)]
    assert [r.status_code for r in answers[:3]] == [401, 401, 401]
    assert answers[0].headers["ratelimit-limit"] == "3"
    assert answers[0].headers["ratelimit-remaining"] == "2"
    refused = answers[3]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["x-content-type-options"] == "nosniff"


async def test_health_is_never_limited(tmp_path: Path) -> None:
    async with edge(tmp_path, rate_limit_per_minute=1) as (client, _):
        statuses = [(await client.get("/health")).status_code for _ in range(5)]
    assert statuses == [200] * 5


async def test_users_are_limited_separately(tmp_path: Path) -> None:
    async with edge(tmp_path, rate_limit_per_minute=4) as (client, _):
        tokens = []
        for email in ("a@example.com", "b@example.com"):
            await client.post("/api/v1/auth/register", json={"email": email, "password": STRONG_PASSWORD})
            login = await client.post("/api/v1/auth/login", json={"email": email, "password": STRONG_PASSWORD})
            tokens.append(login.json()["access_token"])
        a, b = ({"Authorization": f"Bearer {t}"} for t in tokens)
        a_answers = [(await client.get("/api/v1/users/me", headers=a)).status_code for _ in range(5)]
        assert a_answers == [200, 200, 200, 200, 429]
        assert (await client.get("/api/v1/users/me", headers=b)).status_code == 200


async def test_spoofed_forwarded_for_does_not_reset_the_limit(tmp_path: Path) -> None:
    async with edge(tmp_path, peer="198.51.100.20", rate_limit_per_minute=2) as (client, _):
        statuses = [
            (await client.get("/api/v1/conversations", headers={"X-Forwarded-For": f"10.0.0.{i}"})).status_code
            for i in range(3)
        ]
    assert statuses == [401, 401, 429]


async def test_password_guessing_backs_off_but_owner_elsewhere_gets_in(tmp_path: Path) -> None:
    async with edge(tmp_path) as (client, _):
        await client.post("/api/v1/auth/register", json={"email": "victim@example.com", "password": STRONG_PASSWORD})
    async with edge(tmp_path, peer="203.0.113.66") as (attacker, app):
        guesses = [
            await attacker.post(
                "/api/v1/auth/login", json={"email": "victim@example.com", "password": f"guess-{i}-xyz"}
            )
            for i in range(5)
        ]
        assert {r.status_code for r in guesses} == {401}
        blocked = await attacker.post(
            "/api/v1/auth/login", json={"email": "Victim@Example.com", "password": STRONG_PASSWORD}
        )
        assert blocked.status_code == 429
        assert blocked.json()["error"]["code"] == "too_many_attempts"
        assert 1 <= int(blocked.headers["retry-after"]) <= 300
        # other accounts are unaffected
        other = await attacker.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": "x" * 12})
        assert other.status_code == 401
        # the owner, from their own address, is not locked out
        transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 999))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as owner:
            ok = await owner.post(
                "/api/v1/auth/login", json={"email": "victim@example.com", "password": STRONG_PASSWORD}
            )
            assert ok.status_code == 200


async def test_auth_routes_have_a_per_ip_limit(tmp_path: Path) -> None:
    async with edge(tmp_path) as (client, _):
        statuses = [
            (
                await client.post("/api/v1/auth/password-reset/confirm", json={"token": "x", "new_password": "y"})
            ).status_code
            for _ in range(21)
        ]
    assert set(statuses[:20]) == {401}  # unknown code
    assert statuses[20] == 429


# Redis: shared across instances, and what happens when it goes away


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                self.process.wait(timeout=0.05) if self.process.poll() is not None else time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if services_required():
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis
async def test_limit_is_shared_by_instances(tmp_path: Path, private_redis: PrivateRedis) -> None:
    async with (
        edge(tmp_path, rate_limit_per_minute=3, redis_url=private_redis.url) as (first, _),
        edge(tmp_path, rate_limit_per_minute=3, redis_url=private_redis.url) as (second, _),
    ):
        statuses = [(await c.get("/api/v1/conversations")).status_code for c in (first, second, first, second)]
    assert statuses == [401, 401, 401, 429]


@pytest.mark.redis
async def test_redis_outage_degrades_safely_and_recovers(
    tmp_path: Path, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FallbackLimiter, "RETRY_REDIS_AFTER", 0.0)
    async with edge(tmp_path, rate_limit_per_minute=50, redis_url=private_redis.url) as (client, app):
        await client.post("/api/v1/auth/register", json={"email": "r@example.com", "password": STRONG_PASSWORD})
        assert (await client.get("/api/v1/conversations")).status_code == 401

        private_redis.stop()
        # general traffic: limited locally, never a 500
        during = await client.get("/api/v1/conversations")
        assert during.status_code == 401
        assert "ratelimit-limit" in during.headers
        # sign-in limits must hold across instances: without Redis they fail closed
        login = await client.post("/api/v1/auth/login", json={"email": "r@example.com", "password": STRONG_PASSWORD})
        assert login.status_code == 503
        assert login.json()["error"]["code"] == "rate_limiter_unavailable"
        assert login.headers["retry-after"] == "5"
        ready = await client.get("/health/ready")
        assert ready.status_code == 503

        private_redis.start()
        # the connection pool reconnects on its own
        login = await client.post("/api/v1/auth/login", json={"email": "r@example.com", "password": STRONG_PASSWORD})
        assert login.status_code == 200
        assert not app.state.throttle.limiter.degraded


def test_rate_limit_headers_carry_the_tightest_window() -> None:
    from chatstudio.http_security import rate_limit_headers
    from chatstudio.ratelimit import Decision

    decision = Decision(False, 120, 0, 37, 37)
    assert rate_limit_headers(decision) == [
        (b"ratelimit-limit", b"120"),
        (b"ratelimit-remaining", b"0"),
        (b"ratelimit-reset", b"37"),
    ]
