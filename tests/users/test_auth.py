from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from chatstudio import security
from chatstudio.users.models import User
from tests.conftest import STRONG_PASSWORD, TEST_SECRET_KEY, SignedIn, sign_up

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/users/me"


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# registration


async def test_register_returns_user_without_secrets(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json={"email": "Ann@Example.ORG", "password": STRONG_PASSWORD, "name": "Ann"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "ann@example.org"
    assert body["name"] == "Ann"
    assert body["role"] == "user"
    assert body["is_active"] is True
    assert set(body) == {"id", "email", "name", "role", "is_active", "created_at"}
    assert STRONG_PASSWORD not in response.text
    assert "argon2" not in response.text


async def test_email_is_unique_case_insensitively(client: httpx.AsyncClient) -> None:
    await sign_up(client, "carol@example.com")
    again = await client.post(REGISTER, json={"email": "CAROL@example.COM", "password": STRONG_PASSWORD})
    assert again.status_code == 409
    assert error_code(again) == "email_taken"


async def test_concurrent_registrations_of_one_email_make_one_account(client: httpx.AsyncClient, app: Any) -> None:
    body = {"email": "race@example.com", "password": STRONG_PASSWORD}
    responses = await asyncio.gather(*(client.post(REGISTER, json=body) for _ in range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1
    assert all(s == 409 for s in statuses if s != 201)
    async with app.state.sessionmaker() as session:
        users = (await session.execute(select(User).where(User.email == "race@example.com"))).scalars().all()
    assert len(users) == 1


@pytest.mark.parametrize("field", ["role", "is_admin", "is_active", "id"])
async def test_privileged_fields_are_rejected(client: httpx.AsyncClient, field: str) -> None:
    value: Any = {"role": "admin", "is_admin": True, "is_active": True, "id": str(uuid.uuid4())}[field]
    response = await client.post(
        REGISTER, json={"email": "mallory@example.com", "password": STRONG_PASSWORD, field: value}
    )
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert any(field in detail["loc"] for detail in response.json()["error"]["details"])
    # and nothing was stored
    login = await client.post(LOGIN, json={"email": "mallory@example.com", "password": STRONG_PASSWORD})
    assert login.status_code == 401


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short1!", "at least 10"),
        ("x" * 129, "at most 128"),
        ("password123", "too common"),
        ("1234567890", "too common"),
        ("qwertyuiop", "too common"),
        ("dave@example.com", "email"),
        ("DAVE@EXAMPLE.COM", "email"),
    ],
)
async def test_password_policy(client: httpx.AsyncClient, password: str, reason: str) -> None:
    response = await client.post(REGISTER, json={"email": "dave@example.com", "password": password})
    assert response.status_code == 422
    assert error_code(response) == "weak_password"
    assert reason in response.json()["error"]["message"]


def test_common_password_list_is_large() -> None:
    assert len(security.common_passwords()) >= 10_000


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@b.com", "a b@c.com", ""])
async def test_invalid_email_is_422(client: httpx.AsyncClient, email: str) -> None:
    response = await client.post(REGISTER, json={"email": email, "password": STRONG_PASSWORD})
    assert response.status_code == 422


async def test_password_is_stored_as_argon2id(client: httpx.AsyncClient, app: Any) -> None:
    await sign_up(client, "erin@example.com")
    async with app.state.sessionmaker() as session:
        user = (await session.execute(select(User).where(User.email == "erin@example.com"))).scalar_one()
    assert user.password_hash.startswith("$argon2id$")
    assert STRONG_PASSWORD not in user.password_hash


# login


async def test_login_issues_token_pair(client: httpx.AsyncClient) -> None:
    await client.post(REGISTER, json={"email": "fay@example.com", "password": STRONG_PASSWORD})
    response = await client.post(LOGIN, json={"email": "FAY@example.com", "password": STRONG_PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    claims = jwt.decode(body["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])
    assert {"sub", "exp", "iat", "jti", "type", "sid"} <= set(claims)
    assert claims["type"] == "access"
    assert claims["exp"] - claims["iat"] == 30 * 60
    me = await client.get(ME, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == "fay@example.com"


async def test_oauth2_password_form_login(client: httpx.AsyncClient) -> None:
    await client.post(REGISTER, json={"email": "gus@example.com", "password": STRONG_PASSWORD})
    response = await client.post(
        LOGIN, data={"grant_type": "password", "username": "gus@example.com", "password": STRONG_PASSWORD}
    )
    assert response.status_code == 200
    assert response.json()["access_token"]


async def test_unknown_email_and_wrong_password_look_the_same(client: httpx.AsyncClient) -> None:
    await client.post(REGISTER, json={"email": "hal@example.com", "password": STRONG_PASSWORD})
    wrong = await client.post(LOGIN, json={"email": "hal@example.com", "password": "wrong-password-1"})
    unknown = await client.post(LOGIN, json={"email": "nobody@example.com", "password": "wrong-password-1"})
    assert wrong.status_code == unknown.status_code == 401
    strip = lambda r: {k: v for k, v in r.json()["error"].items() if k != "request_id"}  # noqa: E731
    assert strip(wrong) == strip(unknown) == {"code": "invalid_credentials", "message": "Incorrect email or password."}
    assert wrong.headers.get("www-authenticate") == unknown.headers.get("www-authenticate")


async def test_unknown_email_still_verifies_a_hash(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing parity by construction: an unknown email costs one argon2 verification, like a real one."""
    calls: list[str] = []
    original = security.verify_password

    def counting(password_hash: str, password: str) -> bool:
        calls.append(password_hash)
        return original(password_hash, password)

    monkeypatch.setattr(security, "verify_password", counting)
    response = await client.post(LOGIN, json={"email": "ghost@example.com", "password": "whatever-pass"})
    assert response.status_code == 401
    assert calls == [security.dummy_password_hash()]


async def test_login_rehashes_outdated_parameters(client: httpx.AsyncClient, app: Any) -> None:
    from argon2 import PasswordHasher

    await client.post(REGISTER, json={"email": "ida@example.com", "password": STRONG_PASSWORD})
    weak_hash = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(STRONG_PASSWORD)
    async with app.state.sessionmaker() as session:
        user = (await session.execute(select(User).where(User.email == "ida@example.com"))).scalar_one()
        user.password_hash = weak_hash
        await session.commit()
    assert (await client.post(LOGIN, json={"email": "ida@example.com", "password": STRONG_PASSWORD})).status_code == 200
    async with app.state.sessionmaker() as session:
        user = (await session.execute(select(User).where(User.email == "ida@example.com"))).scalar_one()
    assert user.password_hash != weak_hash
    assert not security.password_needs_rehash(user.password_hash)


# access tokens


def _forge(payload: dict[str, Any], key: str = TEST_SECRET_KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, TEST_SECRET_KEY, algorithms=["HS256"]))


async def test_missing_or_garbage_token_is_401(client: httpx.AsyncClient) -> None:
    assert (await client.get(ME)).status_code == 401
    response = await client.get(ME, headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_alg_none_is_rejected(client: httpx.AsyncClient, alice: SignedIn) -> None:
    claims = _claims(alice.access_token)

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    response = await client.get(ME, headers={"Authorization": f"Bearer {unsigned}"})
    assert response.status_code == 401


async def test_wrong_key_is_rejected(client: httpx.AsyncClient, alice: SignedIn) -> None:
    token = _forge(_claims(alice.access_token), key="another-key-that-is-long-enough-0123456789")
    assert (await client.get(ME, headers={"Authorization": f"Bearer {token}"})).status_code == 401


async def test_other_algorithm_is_rejected(client: httpx.AsyncClient, alice: SignedIn) -> None:
    token = _forge(_claims(alice.access_token), algorithm="HS512")
    assert (await client.get(ME, headers={"Authorization": f"Bearer {token}"})).status_code == 401


async def test_expired_token_is_rejected(client: httpx.AsyncClient, alice: SignedIn) -> None:
    claims = _claims(alice.access_token)
    past = int(time.time()) - 3600
    token = _forge({**claims, "iat": past - 60, "exp": past})
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


async def test_token_of_another_type_is_rejected(client: httpx.AsyncClient, alice: SignedIn) -> None:
    token = _forge({**_claims(alice.access_token), "type": "refresh"})
    assert (await client.get(ME, headers={"Authorization": f"Bearer {token}"})).status_code == 401


async def test_refresh_token_used_as_access_token_is_rejected(client: httpx.AsyncClient, alice: SignedIn) -> None:
    response = await client.get(ME, headers={"Authorization": f"Bearer {alice.refresh_token}"})
    assert response.status_code == 401


async def test_token_for_unknown_user_is_rejected(client: httpx.AsyncClient, alice: SignedIn) -> None:
    token = _forge({**_claims(alice.access_token), "sub": str(uuid.uuid4())})
    assert (await client.get(ME, headers={"Authorization": f"Bearer {token}"})).status_code == 401


# refresh tokens


async def test_refresh_rotates_the_token(client: httpx.AsyncClient, alice: SignedIn) -> None:
    response = await client.post(REFRESH, json={"refresh_token": alice.refresh_token})
    assert response.status_code == 200
    pair = response.json()
    assert pair["refresh_token"] != alice.refresh_token
    assert (await client.get(ME, headers={"Authorization": f"Bearer {pair['access_token']}"})).status_code == 200
    second = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_family(client: httpx.AsyncClient, alice: SignedIn) -> None:
    rotated = (await client.post(REFRESH, json={"refresh_token": alice.refresh_token})).json()
    replay = await client.post(REFRESH, json={"refresh_token": alice.refresh_token})
    assert replay.status_code == 401
    assert error_code(replay) == "refresh_token_reused"
    # the legitimate holder's newer tokens are dead too
    assert (await client.post(REFRESH, json={"refresh_token": rotated["refresh_token"]})).status_code == 401
    assert (await client.get(ME, headers={"Authorization": f"Bearer {rotated['access_token']}"})).status_code == 401
    # other sign-ins of the same user are untouched
    other = await client.post(LOGIN, json={"email": alice.email, "password": alice.password})
    assert (
        await client.get(ME, headers={"Authorization": f"Bearer {other.json()['access_token']}"})
    ).status_code == 200


async def test_concurrent_refreshes_with_one_token_succeed_once(client: httpx.AsyncClient, alice: SignedIn) -> None:
    responses = await asyncio.gather(
        *(client.post(REFRESH, json={"refresh_token": alice.refresh_token}) for _ in range(3))
    )
    assert sum(r.status_code == 200 for r in responses) <= 1
    assert all(r.status_code in (200, 401) for r in responses)


async def test_unknown_refresh_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post(REFRESH, json={"refresh_token": "nope"})
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


async def test_refresh_tokens_are_stored_hashed(client: httpx.AsyncClient, alice: SignedIn, app: Any) -> None:
    from chatstudio.users.models import RefreshToken

    async with app.state.sessionmaker() as session:
        hashes = (await session.execute(select(RefreshToken.token_hash))).scalars().all()
    assert alice.refresh_token not in hashes
    assert security.hash_opaque_token(alice.refresh_token) in hashes


async def test_expired_refresh_token_is_rejected(client: httpx.AsyncClient, alice: SignedIn, app: Any) -> None:
    from chatstudio.users.models import RefreshToken

    async with app.state.sessionmaker() as session:
        row = (
            await session.execute(
                select(RefreshToken).where(RefreshToken.token_hash == security.hash_opaque_token(alice.refresh_token))
            )
        ).scalar_one()
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        await session.commit()
    assert (await client.post(REFRESH, json={"refresh_token": alice.refresh_token})).status_code == 401


# logout, disabled accounts


async def test_logout_revokes_access_and_refresh(client: httpx.AsyncClient, alice: SignedIn) -> None:
    response = await client.post(LOGOUT, headers=alice.headers)
    assert response.status_code == 204
    assert (await client.get(ME, headers=alice.headers)).status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": alice.refresh_token})).status_code == 401
    assert (await client.post(LOGOUT, headers=alice.headers)).status_code == 401


async def test_logout_records_the_token_id(client: httpx.AsyncClient, alice: SignedIn, app: Any) -> None:
    from chatstudio.users.models import RevokedAccessToken

    await client.post(LOGOUT, headers=alice.headers)
    async with app.state.sessionmaker() as session:
        jtis = (await session.execute(select(RevokedAccessToken.jti))).scalars().all()
    assert _claims(alice.access_token)["jti"] in jtis


async def test_disabled_user_gets_401_everywhere(client: httpx.AsyncClient, alice: SignedIn, app: Any) -> None:
    async with app.state.sessionmaker() as session:
        user = (await session.execute(select(User).where(User.email == alice.email))).scalar_one()
        user.is_active = False
        await session.commit()
    assert (await client.get(ME, headers=alice.headers)).status_code == 401
    assert (await client.get("/api/v1/conversations", headers=alice.headers)).status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": alice.refresh_token})).status_code == 401
    login = await client.post(LOGIN, json={"email": alice.email, "password": alice.password})
    assert login.status_code == 401


# profile and password


async def test_read_and_update_me(client: httpx.AsyncClient, alice: SignedIn) -> None:
    me = (await client.get(ME, headers=alice.headers)).json()
    assert me["name"] == "Alice"
    updated = await client.patch(ME, headers=alice.headers, json={"name": "  Alice Liddell "})
    assert updated.status_code == 200
    assert updated.json()["name"] == "Alice Liddell"
    assert (await client.get(ME, headers=alice.headers)).json()["name"] == "Alice Liddell"


@pytest.mark.parametrize("body", [{"email": "x@example.com"}, {"role": "admin"}, {"name": "x" * 201}, {"name": ""}])
async def test_update_me_rejects_bad_fields(client: httpx.AsyncClient, alice: SignedIn, body: dict[str, Any]) -> None:
    response = await client.patch(ME, headers=alice.headers, json=body)
    assert response.status_code == 422
    me = (await client.get(ME, headers=alice.headers)).json()
    assert me["role"] == "user"
    assert me["email"] == alice.email
    assert me["name"] == "Alice"


async def test_change_password_revokes_other_sessions(client: httpx.AsyncClient, alice: SignedIn) -> None:
    other = (await client.post(LOGIN, json={"email": alice.email, "password": alice.password})).json()
    new_password = "new-Saffron-91-lantern"
    response = await client.post(
        "/api/v1/users/me/password",
        headers=alice.headers,
        json={"current_password": alice.password, "new_password": new_password},
    )
    assert response.status_code == 204
    assert (await client.get(ME, headers=alice.headers)).status_code == 200  # this session survives
    assert (await client.get(ME, headers={"Authorization": f"Bearer {other['access_token']}"})).status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})).status_code == 401
    assert (await client.post(LOGIN, json={"email": alice.email, "password": alice.password})).status_code == 401
    assert (await client.post(LOGIN, json={"email": alice.email, "password": new_password})).status_code == 200


async def test_change_password_needs_the_current_one(client: httpx.AsyncClient, alice: SignedIn) -> None:
    response = await client.post(
        "/api/v1/users/me/password",
        headers=alice.headers,
        json={"current_password": "not-my-password", "new_password": "new-Saffron-91-lantern"},
    )
    assert response.status_code == 401
    assert (await client.post(LOGIN, json={"email": alice.email, "password": alice.password})).status_code == 200


async def test_change_password_applies_the_policy(client: httpx.AsyncClient, alice: SignedIn) -> None:
    response = await client.post(
        "/api/v1/users/me/password",
        headers=alice.headers,
        json={"current_password": alice.password, "new_password": "password123"},
    )
    assert response.status_code == 422
    assert error_code(response) == "weak_password"
