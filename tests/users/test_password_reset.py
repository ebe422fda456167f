"""Password reset against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message as EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from sqlalchemy import select

from chatstudio.config import Settings
from tests.conftest import STRONG_PASSWORD, Backend, make_settings, running_app, sign_up

REQUEST = "/api/v1/auth/password-reset/request"
CONFIRM = "/api/v1/auth/password-reset/confirm"
LOGIN = "/api/v1/auth/login"
SMTP_USER = "mailer"
SMTP_SECRET = "smtp-secret-Pw-42"
# The loopback test server takes AUTH without TLS; aiosmtpd rightly warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@dataclass
class Inbox:
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def authenticate(self, server: Any, session: Session, envelope: Envelope, mechanism: str, auth: Any) -> AuthResult:
        ok = (
            isinstance(auth, LoginPassword)
            and auth.login.decode() == SMTP_USER
            and auth.password.decode() == SMTP_SECRET
        )
        if ok:
            self.logins.append(auth.login.decode())
        return AuthResult(success=ok)

    def code_for(self, address: str) -> str:
        for message in reversed(self.messages):
            if message["To"] == address:
                body = message.get_payload(decode=True)
                assert isinstance(body, bytes)
                found = re.search(r"Reset code: (\S+)", body.decode())
                assert found is not None
                return found.group(1)
        raise AssertionError(f"no mail to {address}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox(port=_free_port())
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        authenticator=box.authenticate,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
async def mail_client(backend: Backend, tmp_path: Path, inbox: Inbox) -> Any:
    settings: Settings = make_settings(
        backend.url,
        data_dir=tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=inbox.port,
        smtp_tls="none",
        smtp_username=SMTP_USER,
        smtp_password=SMTP_SECRET,
        smtp_from="Studio <studio@example.com>",
        public_base_url="https://chat.example.com",
    )
    async with running_app(settings, wipe=True) as (client, app):
        yield client, app


async def test_reset_round_trip(mail_client: Any, inbox: Inbox) -> None:
    client, _ = mail_client
    user = await sign_up(client, "rita@example.com")
    response = await client.post(REQUEST, json={"email": "Rita@Example.com"})
    assert response.status_code == 202
    assert len(inbox.messages) == 1
    mail = inbox.messages[0]
    assert mail["To"] == "rita@example.com"
    assert mail["From"] == "Studio <studio@example.com>"
    assert inbox.logins == [SMTP_USER]
    code = inbox.code_for("rita@example.com")
    assert "https://chat.example.com/reset-password#token=" in str(mail.get_payload(decode=True))

    new_password = "brand-New-Pass-2031"
    confirmed = await client.post(CONFIRM, json={"token": code, "new_password": new_password})
    assert confirmed.status_code == 204
    assert (await client.post(LOGIN, json={"email": user.email, "password": STRONG_PASSWORD})).status_code == 401
    assert (await client.post(LOGIN, json={"email": user.email, "password": new_password})).status_code == 200
    # every earlier session is gone
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 401
    # single use
    again = await client.post(CONFIRM, json={"token": code, "new_password": "another-Pass-2032"})
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "invalid_token"


async def test_unknown_email_gets_the_same_answer_and_no_mail(mail_client: Any, inbox: Inbox) -> None:
    client, _ = mail_client
    await sign_up(client, "sam@example.com")
    known = await client.post(REQUEST, json={"email": "sam@example.com"})
    unknown = await client.post(REQUEST, json={"email": "nobody@example.com"})
    malformed = await client.post(REQUEST, json={"email": "not an email"})
    assert known.status_code == unknown.status_code == malformed.status_code == 202
    assert known.json() == unknown.json() == malformed.json()
    assert [m["To"] for m in inbox.messages] == ["sam@example.com"]


async def test_expired_code_is_refused(mail_client: Any, inbox: Inbox) -> None:
    from chatstudio.users.models import PasswordResetToken

    client, app = mail_client
    await sign_up(client, "tom@example.com")
    await client.post(REQUEST, json={"email": "tom@example.com"})
    async with app.state.sessionmaker() as session:
        token = (await session.execute(select(PasswordResetToken))).scalar_one()
        assert (token.expires_at - token.created_at) == timedelta(minutes=30)
        token.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        await session.commit()
    response = await client.post(
        CONFIRM, json={"token": inbox.code_for("tom@example.com"), "new_password": "x-Pass-20310"}
    )
    assert response.status_code == 401
    assert (await client.post(LOGIN, json={"email": "tom@example.com", "password": STRONG_PASSWORD})).status_code == 200


async def test_weak_new_password_keeps_the_code_usable(mail_client: Any, inbox: Inbox) -> None:
    client, _ = mail_client
    await sign_up(client, "uma@example.com")
    await client.post(REQUEST, json={"email": "uma@example.com"})
    code = inbox.code_for("uma@example.com")
    weak = await client.post(CONFIRM, json={"token": code, "new_password": "password123"})
    assert weak.status_code == 422
    assert weak.json()["error"]["code"] == "weak_password"
    assert (await client.post(CONFIRM, json={"token": code, "new_password": "strong-Enough-2033"})).status_code == 204


async def test_codes_are_stored_hashed(mail_client: Any, inbox: Inbox) -> None:
    from chatstudio.users.models import PasswordResetToken

    client, app = mail_client
    await sign_up(client, "val@example.com")
    await client.post(REQUEST, json={"email": "val@example.com"})
    async with app.state.sessionmaker() as session:
        stored = (await session.execute(select(PasswordResetToken.token_hash))).scalars().all()
    assert inbox.code_for("val@example.com") not in stored


async def test_smtp_failure_still_answers_202(backend: Backend, tmp_path: Path) -> None:
    settings = make_settings(
        backend.url, data_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=_free_port(), smtp_tls="none"
    )
    async with running_app(settings, wipe=True) as (client, _):
        await sign_up(client, "wes@example.com")
        response = await client.post(REQUEST, json={"email": "wes@example.com"})
    assert response.status_code == 202
