"""Sentry, pointed at a local endpoint: the envelope that arrives carries the environment and release,
and no request body, token, password or key."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sentry_sdk

from chatstudio import __version__
from chatstudio.config import Settings
from tests.chat.conftest import PROVIDER_KEY
from tests.conftest import STRONG_PASSWORD, sign_up
from tests.ops.conftest import ops_app

SECRET_IN_ERROR = "hunter2-in-an-exception-0123456789"


class Collector:
    def __init__(self) -> None:
        self.envelopes: list[list[dict[str, Any]]] = []
        self.received = threading.Condition()

    def add(self, body: bytes) -> None:
        items = [json.loads(line) for line in body.splitlines() if line.strip().startswith(b"{")]
        with self.received:
            self.envelopes.append(items)
            self.received.notify_all()

    def events(self) -> list[dict[str, Any]]:
        return [item for envelope in self.envelopes for item in envelope if "exception" in item or "logentry" in item]


@pytest.fixture
def sentry_endpoint() -> Iterator[tuple[str, Collector]]:
    collector = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            collector.add(body)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://public0key@127.0.0.1:{server.server_address[1]}/42", collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_error_report_arrives_scrubbed(ops_settings: Settings, sentry_endpoint: tuple[str, Collector]) -> None:
    dsn, collector = sentry_endpoint
    settings = Settings.model_validate(
        {**ops_settings.model_dump(), "sentry_dsn": dsn, "sentry_environment": "staging-test"}
    )
    settings.resolve_secret_key()
    try:
        async with ops_app(settings) as (client, app):
            user = await sign_up(client)

            async def boom() -> None:
                # Known secrets by value, credentials by shape: both must be gone from the report.
                raise RuntimeError(f"failed with {PROVIDER_KEY}, {user.access_token}, password={SECRET_IN_ERROR}")

            app.add_api_route("/api/v1/boom", boom, methods=["POST"])
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
                response = await raw.post(
                    "/api/v1/boom?token=query-token-0123456789",
                    json={"password": STRONG_PASSWORD, "api_key": PROVIDER_KEY},
                    headers={**user.headers, "X-Request-ID": "sentry-test-1", "Cookie": "session=cookie-0123456789"},
                )
            assert response.status_code == 500
            assert response.json()["error"]["request_id"] == "sentry-test-1"
            sentry_sdk.flush(timeout=10)
    finally:
        sentry_sdk.get_client().close(timeout=5)
        sentry_sdk.init()  # no DSN: later tests report nowhere
    events = collector.events()
    assert events, "no event arrived"
    raw = json.dumps(collector.envelopes)
    for secret in (
        PROVIDER_KEY,
        SECRET_IN_ERROR,
        STRONG_PASSWORD,
        user.access_token,
        user.refresh_token,
        "query-token-0123456789",
        "cookie-0123456789",
        settings.signing_key,
    ):
        assert secret not in raw
    event = events[0]
    assert event["environment"] == "staging-test"
    assert event["release"] == f"chatstudio@{__version__}"
    request = event.get("request", {})
    assert "data" not in request
    assert request.get("headers", {}).get("Authorization") in (None, "[REDACTED]", "[Filtered]")


def test_no_dsn_starts_nothing(ops_settings: Settings) -> None:
    from chatstudio.observability.redaction import Redactor
    from chatstudio.observability.sentry import init_sentry

    assert init_sentry(ops_settings, Redactor(), __version__) is False
