"""Outgoing mail over SMTP (SMTP_* settings). smtplib runs in a worker thread so a slow mail
server never blocks the event loop."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from chatstudio.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    to: str
    subject: str
    body: str


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._username = settings.smtp_username
        self._password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self._sender = settings.smtp_from
        self._tls = settings.smtp_tls

    @property
    def configured(self) -> bool:
        return bool(self._host)

    async def send(self, mail: OutgoingMail) -> bool:
        """Deliver one message; failures are logged (without the message body) and reported."""
        if not self._host:
            logger.warning("mail not sent: SMTP_HOST is not configured (subject=%r)", mail.subject)
            return False
        try:
            await asyncio.to_thread(self._send_sync, mail)
        except (OSError, smtplib.SMTPException) as exc:
            logger.error("mail delivery failed: %s: %s", type(exc).__name__, exc)
            return False
        return True

    def _send_sync(self, mail: OutgoingMail) -> None:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message.set_content(mail.body)
        assert self._host is not None
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self._tls == "ssl":
            smtp = smtplib.SMTP_SSL(self._host, self._port, timeout=15, context=context)
        else:
            smtp = smtplib.SMTP(self._host, self._port, timeout=15)
        with smtp:
            if self._tls == "starttls":
                smtp.starttls(context=context)
            if self._username and self._password:
                smtp.login(self._username, self._password)
            smtp.send_message(message)
