"""Structured logs: JSON lines with request context, an access log, redaction of every secret in play,
and rotation of LOG_FILE."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chatstudio.config import Settings
from chatstudio.observability.logging import JsonFormatter, RedactingFilter, dumps_line, logging_config
from chatstudio.observability.redaction import MASK, Redactor, secret_values
from tests.chat.conftest import PROVIDER_KEY
from tests.conftest import STRONG_PASSWORD, sign_up
from tests.ops.conftest import ops_app


@contextmanager
def captured_json_logs(settings: Settings) -> Iterator[io.StringIO]:
    """Our JSON handler (formatter + redaction, as configured for the server) on the root logger at
    DEBUG, so every line any library writes during the block is captured."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secret_values(settings)))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_access_log_line_has_request_context(ops_settings: Settings) -> None:
    with captured_json_logs(ops_settings) as stream:
        async with ops_app(ops_settings) as (client, _):
            user = await sign_up(client)
            response = await client.get(
                "/api/v1/conversations?limit=5", headers={**user.headers, "X-Request-ID": "req-abc-123"}
            )
            made = await client.get("/api/v1/conversations", headers=user.headers)
    assert response.headers["x-request-id"] == "req-abc-123"
    access = [e for e in lines(stream) if e["logger"] == "chatstudio.access"]
    mine = [e for e in access if e.get("request_id") == "req-abc-123"]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["user_id"] == user.id
    assert entry["route"] == "/api/v1/conversations"
    assert entry["status"] == 200
    assert entry["method"] == "GET"
    assert entry["path"] == "/api/v1/conversations?limit=5"
    assert isinstance(entry["duration_ms"], float)
    assert entry["level"] == "info"
    # a request id is made when none is sent, returned, and logged
    generated = made.headers["x-request-id"]
    assert any(e.get("request_id") == generated for e in access)


async def test_no_secret_reaches_any_log_line(ops_settings: Settings) -> None:
    """Provider key (echoed back by a failing upstream), password, access and refresh tokens, the
    signing key: all in play, none in the log."""
    with captured_json_logs(ops_settings) as stream:
        async with ops_app(ops_settings) as (client, _):
            user = await sign_up(client)
            bad_login = await client.post(
                "/api/v1/auth/login", json={"email": user.email, "password": STRONG_PASSWORD + "x"}
            )
            assert bad_login.status_code == 401
            conversation = (await client.post("/api/v1/conversations", json={}, headers=user.headers)).json()["id"]
            url = f"/api/v1/conversations/{conversation}/messages"
            for model in ("denied/x", "broken/x", "openai/x"):
                await client.post(url, json={"content": "hello", "model": model}, headers=user.headers)
            await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
            # tokens in a query string are masked in the access log
            await client.get(f"/api/v1/conversations?token={user.access_token}", headers=user.headers)
            await client.post("/api/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers)
    text = stream.getvalue()
    assert len(lines(stream)) > 10
    secrets = {
        "provider key": PROVIDER_KEY,
        "password": STRONG_PASSWORD,
        "access token": user.access_token,
        "refresh token": user.refresh_token,
        "signing key": ops_settings.signing_key,
    }
    for what, secret in secrets.items():
        assert secret not in text, f"the {what} is in the log"
    assert "token=[REDACTED]" in text


def test_redactor_masks_known_values_and_credential_shapes() -> None:
    redact = Redactor(["s3cr3t-value-123", "short"])
    assert redact("key s3cr3t-value-123 here") == f"key {MASK} here"
    assert redact("short stays") == "short stays"  # too short to be told from ordinary words
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXZhbHVl"
    assert jwt not in redact(f"token {jwt}")
    assert redact("Authorization: Bearer abcdefghijklmnop") == f"Authorization: Bearer {MASK}"
    assert redact("postgresql://chat:hunter2pass@db/chat") == f"postgresql://chat:{MASK}@db/chat"
    assert redact('{"password": "hunter2", "email": "a@b.c"}') == f'{{"password": {MASK}, "email": "a@b.c"}}'
    assert redact("sk-ant-api03-abcdefghijklmnopqrst") == MASK
    scrubbed = redact.scrub({"headers": {"Authorization": "x", "Accept": "y"}, "list": ["s3cr3t-value-123"]})
    assert scrubbed == {"headers": {"Authorization": MASK, "Accept": "y"}, "list": [MASK]}


def test_secret_values_cover_settings_and_urls(ops_settings: Settings) -> None:
    settings = Settings.model_validate(
        {
            **ops_settings.model_dump(),
            "database_url": "postgresql+asyncpg://chat:db-pass-0123456@db/chat",
            "redis_url": "redis://:redis-pass-0123456@cache:6379/0",
            "metrics_token": "metrics-token-0123456789",
            "openai_compatible_endpoints": [{"name": "x", "base_url": "http://x/v1", "api_key": "endpoint-key-0123"}],
        }
    )
    values = set(secret_values(settings))
    assert {"db-pass-0123456", "redis-pass-0123456", "metrics-token-0123456789", "endpoint-key-0123"} <= values
    assert PROVIDER_KEY in values


def test_log_file_rotates_and_holds_json(tmp_path: Path) -> None:
    """In a child process, configured as the server configures itself: dictConfig is process-wide."""
    log_file = tmp_path / "logs" / "app.log"
    log_file.parent.mkdir()
    script = f"""
import logging, sys
from chatstudio.config import Settings
from chatstudio.observability.logging import configure_logging
settings = Settings(
    _env_file=None, secret_key="x" * 8 + "-key-0123456789abcdefghijklmnop", openai_api_key={PROVIDER_KEY!r},
    log_file=sys.argv[1], log_file_max_bytes=4096, log_file_backup_count=2,
)
configure_logging(settings)
for n in range(300):
    logging.getLogger("chatstudio.test").info("line %d with key %s", n, {PROVIDER_KEY!r})
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(log_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in log_file.parent.iterdir() if not p.name.startswith("."))
    assert files == ["app.log", "app.log.1", "app.log.2"]
    for path in log_file.parent.glob("app.log*"):
        assert path.stat().st_size <= 4096 + 512
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            assert entry["logger"] == "chatstudio.test"
            assert PROVIDER_KEY not in line
            assert MASK in entry["message"]
    newest = [json.loads(line)["message"] for line in log_file.read_text().splitlines()]
    assert newest[-1].startswith("line 299 ")


def test_uvicorn_loggers_route_into_ours(ops_settings: Settings) -> None:
    config = logging_config(ops_settings)
    assert config["loggers"]["uvicorn.access"]["propagate"] is False
    assert config["loggers"]["uvicorn.error"]["propagate"] is True
    assert config["root"]["handlers"] == ["console"]
    text = Settings.model_validate({**ops_settings.model_dump(), "log_format": "text"})
    assert logging_config(text)["handlers"]["console"]["formatter"] == "text"


@contextmanager
def shipped_console(settings: Settings) -> Iterator[tuple[io.StringIO, logging.StreamHandler[io.StringIO]]]:
    """The root logger holding only the handler the shipped configuration installs (pytest's capture
    handlers set aside for the block), as in a served worker."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secret_values(settings)))
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield stream, handler
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _access_scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "query_string": b"a=1", "client": ("10.0.0.7", 5000)}


def test_direct_access_line_is_the_formatters_line(ops_settings: Settings) -> None:
    from chatstudio.observability.logging import request_id_var, user_id_var
    from chatstudio.observability.middleware import _access_writer, access_log, record_http

    with shipped_console(ops_settings) as (stream, handler):
        tokens = request_id_var.set("req-direct-1"), user_id_var.set("user-7")
        try:
            record_http(_access_scope("/v1/chat/completions"), 201, 0.01234, 99, b"")
            fields = {"route": "<unmatched>", "status": 201}
            assert _access_writer.write(logging.INFO, "POST /v1/chat/completions 201", fields)
            # What the usual path makes of the same call, for comparison.
            record = access_log.makeRecord(
                access_log.name, logging.INFO, "", 0, "POST /v1/chat/completions 201", (), None, extra=fields
            )
            expected = json.loads(handler.format(record))
        finally:
            request_id_var.reset(tokens[0])
            user_id_var.reset(tokens[1])
    written = lines(stream)
    assert len(written) == 2
    first, second = written
    assert first["request_id"] == "req-direct-1"
    assert first["user_id"] == "user-7"
    assert first["path"] == "/v1/chat/completions?a=1"
    assert first["client"] == "10.0.0.7"
    assert first["status"] == 201
    assert first["duration_ms"] == 12.34
    assert first["bytes"] == 99
    made = datetime.fromisoformat(expected["ts"])
    for entry in (first, second):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"])
        assert abs((datetime.fromisoformat(entry["ts"]) - made).total_seconds()) < 5
    assert {k: v for k, v in second.items() if k != "ts"} == {k: v for k, v in expected.items() if k != "ts"}
    assert list(second) == list(expected)


def test_access_lines_needing_redaction_or_other_handlers_take_the_usual_path(ops_settings: Settings) -> None:
    from chatstudio.observability.middleware import _access_writer, record_http

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXZhbHVl"
    with shipped_console(ops_settings) as (stream, _):
        assert not _access_writer.write(logging.INFO, f"GET /reset/{jwt} 200", {})
        assert not _access_writer.write(logging.INFO, "GET / 200", {"client": jwt})
        record_http(_access_scope(f"/reset/{jwt}"), 200, 0.001, 0, b"")
        extra = io.StringIO()
        second = logging.StreamHandler(extra)
        second.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(second)
        assert not _access_writer.write(logging.INFO, "GET / 200", {})
        record_http(_access_scope("/plain"), 200, 0.001, 0, b"")
    assert jwt not in stream.getvalue()
    assert lines(stream)[0]["path"].startswith("/reset/")
    # Both handlers got the line written while two were installed.
    assert [e["path"] for e in lines(stream)][1:] == ["/plain?a=1"]
    assert [e["path"] for e in lines(extra)] == ["/plain?a=1"]


def test_a_line_is_json_whatever_its_fields_hold() -> None:
    odd = {3: "int key", "when": datetime(2026, 1, 2, tzinfo=UTC), "text": 'é\n"q"', "other": Path("/x")}
    assert json.loads(dumps_line(odd)) == {
        "3": "int key",
        "when": "2026-01-02T00:00:00+00:00",
        "text": 'é\n"q"',
        "other": "/x",
    }
    assert json.loads(dumps_line({"big": 2**70, "text": "é"})) == {"big": 2**70, "text": "é"}
