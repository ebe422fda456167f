from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from chatstudio.errors import Conflict
from chatstudio.main import create_app
from tests.conftest import make_settings


def _app_with_failing_routes(tmp_path: Path, *, debug: bool) -> httpx.AsyncClient:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/e.db", data_dir=tmp_path, debug=debug))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2 SELECT * FROM user_account")

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("Already there.")

    # raise_app_exceptions=False: look at what a client receives, as uvicorn would send it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.mark.parametrize("debug", [False, True])
async def test_unexpected_error_is_a_json_500_without_internals(
    tmp_path: Path, debug: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with _app_with_failing_routes(tmp_path, debug=debug) as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "An unexpected error occurred.", "request_id": "req-123"}
    }
    for leak in ("Traceback", "hunter2", "SELECT", "RuntimeError", 'File "'):
        assert leak not in response.text
    # the operator still gets the traceback, tied to the request id
    assert any("req-123" in record.getMessage() and record.exc_info for record in caplog.records)


async def test_app_error_renders_code_and_message(tmp_path: Path) -> None:
    async with _app_with_failing_routes(tmp_path, debug=False) as client:
        response = await client.get("/conflict")
    assert response.status_code == 409
    body = response.json()["error"]
    assert body["code"] == "conflict"
    assert body["message"] == "Already there."
    assert body["request_id"] == response.headers["x-request-id"]


async def test_unknown_route_is_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


async def test_wrong_method_is_json_405(client: httpx.AsyncClient) -> None:
    response = await client.put("/health")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_validation_error_keeps_422_with_field_details(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/register", json={"email": "x@example.com"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["loc"] == ["body", "password"]
    assert error["details"][0]["type"] == "missing"


async def test_malformed_json_is_422_not_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    login = await client.post("/api/v1/auth/login", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert login.status_code == 422


async def test_request_id_is_taken_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    # a header that could inject into logs is replaced, not echoed
    hostile = await client.get("/health", headers={"X-Request-ID": "x" * 300})
    assert hostile.headers["x-request-id"] != "x" * 300
