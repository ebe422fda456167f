"""Attacks on the HTTP edge: foreign origins, spoofed proxy headers, missing headers, TRACE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request

from chatstudio.config import ConfigError, load_settings
from chatstudio.main import create_app
from tests.conftest import make_settings

ALLOWED = "https://app.example.com"


@asynccontextmanager
async def _client(tmp_path: Path, peer: str = "127.0.0.1", **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/h.db", data_dir=tmp_path, **overrides)
    app = create_app(settings)

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        return {"client": request.client.host if request.client else None, "scheme": request.url.scheme}

    transport = httpx.ASGITransport(app=app, client=(peer, 4321))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(tmp_path, allowed_origins=[ALLOWED]) as client:
        yield client


async def test_allowed_origin_is_echoed_with_vary(edge: httpx.AsyncClient) -> None:
    response = await edge.get("/health", headers={"Origin": ALLOWED})
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "origin" in response.headers["vary"].lower()
    assert "access-control-allow-credentials" not in response.headers
    preflight = await edge.options(
        "/api/v1/conversations",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com.evil.com",
        "https://evil-app.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "null",
        "*",
        "https://APP.EXAMPLE.COM.evil.com",
    ],
)
async def test_foreign_origins_are_not_echoed(edge: httpx.AsyncClient, origin: str) -> None:
    response = await edge.get("/health", headers={"Origin": origin})
    assert "access-control-allow-origin" not in response.headers
    preflight = await edge.options(
        "/api/v1/conversations", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.headers.get("access-control-allow-origin") in (None, "")
    assert preflight.status_code == 400


@pytest.mark.parametrize("value", ["*", "null", "https://a.example.com,*", "app.example.com", "https://x.com/path"])
def test_wildcard_or_malformed_origin_config_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALLOWED_ORIGINS", value)
    monkeypatch.setenv("SECRET_KEY", "k" * 20 + "-abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        load_settings()


async def test_security_headers_on_every_response(edge: httpx.AsyncClient) -> None:
    for response in (
        await edge.get("/health"),
        await edge.get("/nope"),
        await edge.post("/api/v1/auth/login", json={}),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "camera=()" in response.headers["permissions-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in response.headers  # plain HTTP


async def test_authenticated_responses_are_not_stored(edge: httpx.AsyncClient) -> None:
    response = await edge.get("/api/v1/users/me", headers={"Authorization": "Bearer x"})
    assert response.headers["cache-control"] == "no-store"
    assert "no-store" not in (await edge.get("/health")).headers.get("cache-control", "")


async def test_hsts_over_https_via_trusted_proxy(edge: httpx.AsyncClient) -> None:
    response = await edge.get("/whoami", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert response.json() == {"client": "203.0.113.9", "scheme": "https"}


async def test_forwarded_headers_from_an_untrusted_peer_change_nothing(tmp_path: Path) -> None:
    async with _client(tmp_path, peer="198.51.100.7") as client:
        response = await client.get(
            "/whoami", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.0.0.1, 127.0.0.1"}
        )
    assert response.json() == {"client": "198.51.100.7", "scheme": "http"}
    assert "strict-transport-security" not in response.headers


async def test_client_cannot_prepend_a_fake_address(edge: httpx.AsyncClient) -> None:
    # The proxy appends the real peer; whatever the client wrote before it is ignored.
    response = await edge.get("/whoami", headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.50"})
    assert response.json()["client"] == "203.0.113.50"


async def test_proxies_can_be_disabled(tmp_path: Path) -> None:
    async with _client(tmp_path, forwarded_allow_ips=[]) as client:
        response = await client.get("/whoami", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.json()["client"] == "127.0.0.1"


@pytest.mark.parametrize("method", ["TRACE", "TRACK"])
async def test_trace_is_405(edge: httpx.AsyncClient, method: str) -> None:
    response = await edge.request(method, "/health")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
