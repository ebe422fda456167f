"""Shared fixtures: real databases (SQLite always; PostgreSQL and MariaDB/MySQL when reachable),
the app over an ASGI transport, and helpers to make users.

Service URLs come from TEST_POSTGRES_URL, TEST_MYSQL_URL and TEST_REDIS_URL (defaulting to the
local services). An unreachable service skips its tests, unless CHATSTUDIO_REQUIRE_SERVICES=1
(CI) turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from chatstudio.config import Settings
from chatstudio.db import Base, create_engine
from chatstudio.main import create_app
from chatstudio.models import import_all_models

TEST_SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+aiomysql://root@127.0.0.1:3306/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
STRONG_PASSWORD = "violet-Harbor-73-kettle"

import_all_models()


def services_required() -> bool:
    return os.environ.get("CHATSTUDIO_REQUIRE_SERVICES", "") not in ("", "0", "false")


def unavailable(what: str) -> None:
    if services_required():
        pytest.fail(f"{what} is unreachable and CHATSTUDIO_REQUIRE_SERVICES is set", pytrace=False)
    pytest.skip(f"{what} is unreachable")


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": TEST_SECRET_KEY,
        "debug": False,
        "enable_docs": True,
        "smtp_host": None,
        "local_model_enabled": False,
        # Limits have their own tests; elsewhere they must not interfere.
        "rate_limit_per_minute": 100_000,
        "rate_limit_per_hour": 1_000_000,
    }
    values.update(overrides)
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    settings.resolve_secret_key()
    return settings


async def _admin_execute(url: str, statement: str) -> None:
    engine = create_engine(url, pooled=False)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _create_scratch_database(admin_url: str, what: str) -> str:
    """A fresh database per test session, so runs never see each other's rows."""
    name = f"chatstudio_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(asyncio.wait_for(_admin_execute(admin_url, f"CREATE DATABASE {name}"), 10))
    except (OSError, TimeoutError, Exception) as exc:
        unavailable(f"{what} ({type(exc).__name__})")
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_scratch_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    asyncio.run(_admin_execute(admin_url, f"DROP DATABASE IF EXISTS {name}"))


def _migrate(url: str) -> None:
    from chatstudio import migrate

    migrate.upgrade(url)


@dataclass(frozen=True)
class Backend:
    name: str
    url: str


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("sqlite"),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Every test that uses the database runs once per backend, on a schema built by the migrations."""
    kind = str(request.param)
    if kind == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "test.db"
        url = f"sqlite+aiosqlite:///{path}"
        _migrate(url)
        yield Backend(kind, url)
        return
    admin_url = {
        "postgres": os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        "mysql": make_settings(os.environ.get("TEST_MYSQL_URL", DEFAULT_MYSQL_URL)).database_url,
    }[kind]
    url = _create_scratch_database(admin_url, kind)
    try:
        _migrate(url)
        yield Backend(kind, url)
    finally:
        _drop_scratch_database(admin_url, url)


async def _wipe(url: str) -> None:
    engine = create_engine(url, pooled=False)
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    try:
        async with engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                await conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
            elif dialect in ("mysql", "mariadb"):
                await conn.execute(text("SET FOREIGN_KEY_CHECKS=0"))
                for table in tables:
                    await conn.execute(text(f"DELETE FROM {table}"))
                await conn.execute(text("SET FOREIGN_KEY_CHECKS=1"))
            else:
                await conn.execute(text("PRAGMA foreign_keys=OFF"))
                for table in tables:
                    await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return make_settings(backend.url, data_dir=tmp_path)


@asynccontextmanager
async def running_app(settings: Settings, *, wipe: bool = False) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app with its lifespan running and a client over ASGI; `wipe` empties the database after."""
    application = create_app(settings)
    try:
        async with (
            application.router.lifespan_context(application),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver") as http,
        ):
            yield http, application
    finally:
        if wipe:
            await _wipe(settings.database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application
    await _wipe(settings.database_url)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclass
class SignedIn:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def sign_up(
    client: httpx.AsyncClient, email: str | None = None, password: str = STRONG_PASSWORD, name: str | None = None
) -> SignedIn:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    body: dict[str, Any] = {"email": email, "password": password}
    if name is not None:
        body["name"] = name
    created = await client.post("/api/v1/auth/register", json=body)
    assert created.status_code == 201, created.text
    tokens = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert tokens.status_code == 200, tokens.text
    data = tokens.json()
    return SignedIn(created.json()["id"], email.lower(), password, data["access_token"], data["refresh_token"])


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> SignedIn:
    return await sign_up(client, "alice@example.com", name="Alice")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> SignedIn:
    return await sign_up(client, "bob@example.com", name="Bob")


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL)

    async def ping() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(url, socket_connect_timeout=2)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:
        unavailable(f"redis ({type(exc).__name__})")
    return url
