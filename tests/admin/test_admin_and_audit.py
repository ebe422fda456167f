from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from chatstudio.audit.models import AuditEvent
from chatstudio.db import session_scope
from chatstudio.main import create_app
from chatstudio.users.service import AuthService
from tests.conftest import STRONG_PASSWORD, Backend, SignedIn, make_settings, sign_up

ADMIN_ROUTES = [
    ("GET", "/api/v1/admin/users", None),
    ("PATCH", f"/api/v1/admin/users/{uuid.uuid4()}", {"is_active": False}),
    ("GET", "/api/v1/admin/audit", None),
]


async def make_admin(app: Any, client: httpx.AsyncClient, email: str = "root@example.com") -> SignedIn:
    async with session_scope(app.state.sessionmaker) as session:
        await AuthService(session, app.state.settings).ensure_admin(email=email, password=STRONG_PASSWORD)
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": STRONG_PASSWORD})
    body = login.json()
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    return SignedIn(me.json()["id"], email, STRONG_PASSWORD, body["access_token"], body["refresh_token"])


async def events(app: Any, **filters: Any) -> list[dict[str, Any]]:
    await app.state.audit.flush()
    async with app.state.sessionmaker() as session:
        rows = (await session.execute(text("SELECT action, outcome, actor_id, target_id, ip FROM audit_event"))).all()
    found = [dict(r._mapping) for r in rows]
    return [e for e in found if all(e[k] == v for k, v in filters.items())]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_non_admins_get_403_everywhere(
    client: httpx.AsyncClient, alice: SignedIn, method: str, path: str, body: Any
) -> None:
    response = await client.request(method, path, headers=alice.headers, json=body)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert (await client.request(method, path, json=body)).status_code == 401


async def test_list_and_search_users(client: httpx.AsyncClient, app: Any, alice: SignedIn, bob: SignedIn) -> None:
    admin = await make_admin(app, client)
    page = (await client.get("/api/v1/admin/users", headers=admin.headers, params={"limit": 2})).json()
    assert len(page["items"]) == 2
    rest = await client.get("/api/v1/admin/users", headers=admin.headers, params={"cursor": page["next_cursor"]})
    emails = {u["email"] for u in page["items"] + rest.json()["items"]}
    assert emails == {"alice@example.com", "bob@example.com", "root@example.com"}
    assert all("password_hash" not in u for u in page["items"])
    found = (await client.get("/api/v1/admin/users", headers=admin.headers, params={"q": "ALI"})).json()["items"]
    assert [u["email"] for u in found] == ["alice@example.com"]
    wildcard = (await client.get("/api/v1/admin/users", headers=admin.headers, params={"q": "%"})).json()["items"]
    assert wildcard == []


async def test_disable_revokes_everything(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    admin = await make_admin(app, client)
    response = await client.patch(f"/api/v1/admin/users/{alice.id}", headers=admin.headers, json={"is_active": False})
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).status_code == 401
    assert (await client.post("/api/v1/auth/refresh", json={"refresh_token": alice.refresh_token})).status_code == 401
    login = await client.post("/api/v1/auth/login", json={"email": alice.email, "password": alice.password})
    assert login.status_code == 401
    enabled = await client.patch(f"/api/v1/admin/users/{alice.id}", headers=admin.headers, json={"is_active": True})
    assert enabled.status_code == 200
    # old sessions stay revoked; a fresh sign-in works
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).status_code == 401
    login = await client.post("/api/v1/auth/login", json={"email": alice.email, "password": alice.password})
    assert login.status_code == 200


async def test_roles_budgets_and_guards(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    admin = await make_admin(app, client)
    promoted = await client.patch(
        f"/api/v1/admin/users/{alice.id}",
        headers=admin.headers,
        json={"role": "admin", "daily_token_budget": 5000, "monthly_token_budget": 100000},
    )
    assert promoted.status_code == 200
    assert (promoted.json()["role"], promoted.json()["daily_token_budget"]) == ("admin", 5000)
    assert (await client.get("/api/v1/admin/users", headers=alice.headers)).status_code == 200
    # nobody demotes or disables themselves
    self_demote = await client.patch(f"/api/v1/admin/users/{admin.id}", headers=admin.headers, json={"role": "user"})
    assert self_demote.status_code == 409
    assert self_demote.json()["error"]["code"] == "cannot_change_self"
    # one admin demotes the other; then the last one stays
    assert (
        await client.patch(f"/api/v1/admin/users/{alice.id}", headers=admin.headers, json={"role": "user"})
    ).status_code == 200
    bad = [
        await client.patch(f"/api/v1/admin/users/{alice.id}", headers=admin.headers, json=body)
        for body in ({"role": "root"}, {"daily_token_budget": -1}, {"email": "x@example.com"}, {"password_hash": "x"})
    ]
    assert [r.status_code for r in bad] == [422, 422, 422, 422]
    missing = await client.patch(f"/api/v1/admin/users/{uuid.uuid4()}", headers=admin.headers, json={"role": "user"})
    assert missing.status_code == 404


async def test_last_admin_cannot_be_removed(client: httpx.AsyncClient, app: Any) -> None:
    admin = await make_admin(app, client)
    other = await make_admin(app, client, "second@example.com")
    async with app.state.sessionmaker() as session:
        await session.execute(
            text("UPDATE user_account SET is_active = :f WHERE email = :e"), {"f": False, "e": admin.email}
        )
        await session.commit()
    response = await client.patch(f"/api/v1/admin/users/{admin.id}", headers=other.headers, json={"role": "user"})
    assert response.status_code == 200  # a disabled admin does not count
    last = await client.patch(f"/api/v1/admin/users/{other.id}", headers=other.headers, json={"is_active": False})
    assert last.status_code == 409


async def test_security_actions_are_audited(client: httpx.AsyncClient, app: Any) -> None:
    user = await sign_up(client, "eve@example.com")
    await client.post("/api/v1/auth/login", json={"email": "eve@example.com", "password": "wrong-password-1"})
    rotated = (await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})).json()
    await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})  # reuse
    login = await client.post("/api/v1/auth/login", json={"email": "eve@example.com", "password": STRONG_PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}", "User-Agent": "audit-test/1.0"}
    await client.post(
        "/api/v1/users/me/password",
        headers=headers,
        json={"current_password": STRONG_PASSWORD, "new_password": "another-Strong-pass-77"},
    )
    conversation = (await client.post("/api/v1/conversations", headers=headers, json={})).json()
    await client.delete(f"/api/v1/conversations/{conversation['id']}", headers=headers)
    await client.post("/api/v1/auth/password-reset/request", json={"email": "eve@example.com"})
    await client.post("/api/v1/auth/logout", headers=headers)
    assert rotated["refresh_token"]
    recorded = {(e["action"], e["outcome"]) for e in await events(app)}
    assert {
        ("auth.register", "success"),
        ("auth.login", "success"),
        ("auth.login", "failure"),
        ("auth.refresh_token_reused", "failure"),
        ("user.password_change", "success"),
        ("conversation.delete", "success"),
        ("auth.password_reset.request", "success"),
        ("auth.logout", "success"),
    } <= recorded
    [deleted] = await events(app, action="conversation.delete")
    assert deleted["target_id"] == conversation["id"]
    assert str(deleted["actor_id"]).replace("-", "") == user.id.replace("-", "")
    assert deleted["ip"] == "127.0.0.1"
    # secrets never reach the trail
    async with app.state.sessionmaker() as session:
        dump = " ".join(str(r) for r in (await session.execute(text("SELECT * FROM audit_event"))).all())
    for secret in (STRONG_PASSWORD, "wrong-password-1", user.refresh_token, user.access_token, "eve@example.com"):
        assert secret not in dump


async def test_admin_reads_the_trail_with_filters(client: httpx.AsyncClient, app: Any, alice: SignedIn) -> None:
    admin = await make_admin(app, client)
    await client.patch(f"/api/v1/admin/users/{alice.id}", headers=admin.headers, json={"daily_token_budget": 10})
    page = await client.get(
        "/api/v1/admin/audit", headers=admin.headers, params={"action": "admin.user.update", "limit": 10}
    )
    assert page.status_code == 200
    [event] = page.json()["items"]
    assert event["actor_id"] == admin.id
    assert event["target_id"] == alice.id
    assert event["details"] == {"daily_token_budget": 10}
    assert event["request_id"]
    failures = await client.get("/api/v1/admin/audit", headers=admin.headers, params={"outcome": "failure"})
    assert all(e["outcome"] == "failure" for e in failures.json()["items"])
    assert (
        await client.get("/api/v1/admin/audit", headers=admin.headers, params={"outcome": "maybe"})
    ).status_code == 422


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "PUT", "POST"])
async def test_no_route_changes_the_trail(client: httpx.AsyncClient, app: Any, method: str) -> None:
    admin = await make_admin(app, client)
    [event] = (await client.get("/api/v1/admin/audit", headers=admin.headers, params={"limit": 1})).json()["items"]
    for path in ("/api/v1/admin/audit", f"/api/v1/admin/audit/{event['id']}"):
        response = await client.request(method, path, headers=admin.headers, json={})
        assert response.status_code in (404, 405)
    assert len(await events(app)) >= 1


async def test_postgres_refuses_to_rewrite_history(client: httpx.AsyncClient, app: Any, backend: Backend) -> None:
    if backend.name != "postgres":
        pytest.skip("the database-level guard is PostgreSQL's")
    await sign_up(client)
    await app.state.audit.flush()
    async with app.state.sessionmaker() as session:
        with pytest.raises(DBAPIError, match="append-only"):
            await session.execute(update(AuditEvent).values(outcome="success"))


def test_disabling_closes_open_websockets(tmp_path: Path) -> None:
    from chatstudio import migrate

    url = f"sqlite+aiosqlite:///{tmp_path}/ws.db"
    migrate.upgrade(url)
    app = create_app(make_settings(url, data_dir=tmp_path))
    with TestClient(app) as http:
        http.post("/api/v1/auth/register", json={"email": "w@example.com", "password": STRONG_PASSWORD})
        token = http.post("/api/v1/auth/login", json={"email": "w@example.com", "password": STRONG_PASSWORD}).json()
        user_id = http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token['access_token']}"}).json()[
            "id"
        ]
        http.portal.call(_make_admin_sync, app)  # type: ignore[union-attr]
        admin = http.post("/api/v1/auth/login", json={"email": "root@example.com", "password": STRONG_PASSWORD}).json()
        with http.websocket_connect("/ws/chat") as ws:
            ws.send_json({"type": "auth", "token": token["access_token"]})
            assert ws.receive_json()["type"] == "ready"
            response = http.patch(
                f"/api/v1/admin/users/{user_id}",
                headers={"Authorization": f"Bearer {admin['access_token']}"},
                json={"is_active": False},
            )
            assert response.status_code == 200
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4401


async def _make_admin_sync(app: Any) -> None:
    async with session_scope(app.state.sessionmaker) as session:
        await AuthService(session, app.state.settings).ensure_admin(email="root@example.com", password=STRONG_PASSWORD)


async def test_disabling_revokes_api_keys_at_once_and_keys_are_audited(
    client: httpx.AsyncClient, app: Any, alice: SignedIn
) -> None:
    admin = await make_admin(app, client)
    created = await client.post("/api/v1/api-keys", headers=alice.headers, json={"name": "laptop"})
    assert created.status_code == 201
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    assert (await client.get("/v1/models", headers=key)).status_code == 200  # now cached in process
    disabled = await client.patch(f"/api/v1/admin/users/{alice.id}", headers=admin.headers, json={"is_active": False})
    assert disabled.status_code == 200
    assert (await client.get("/v1/models", headers=key)).status_code == 401
    second = await client.post("/api/v1/api-keys", headers=admin.headers, json={"name": "ci"})
    await client.delete(f"/api/v1/api-keys/{second.json()['id']}", headers=admin.headers)
    actions = {(e["action"], e["target_id"]) for e in await events(app)}
    assert ("api_key.create", created.json()["id"]) in actions
    assert ("api_key.revoke", second.json()["id"]) in actions
