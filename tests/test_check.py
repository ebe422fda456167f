"""`chatstudio check`: one test per finding, and a clean production configuration passes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chatstudio.cli import main
from chatstudio.config import Settings

GOOD_KEY = "q7Vd-3kPz_8mWnR2tYx5uB9cLh4sJe6fGa1oKi0NvTlQ"
CLEAN = {
    "SECRET_KEY": GOOD_KEY,
    "DATABASE_URL": "postgresql+asyncpg://chat:pw@db.internal:5432/chat",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "REDIS_PASSWORD": "redis-pw-123",
    "SMTP_HOST": "smtp.example.com",
    "SMTP_TLS": "starttls",
    "PUBLIC_BASE_URL": "https://chat.example.com",
    "ALLOWED_ORIGINS": "https://chat.example.com",
}


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    env = dict(CLEAN)
    return env


def run(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["check"])
    return code, capsys.readouterr().out


def test_clean_configuration_passes(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(environment, monkeypatch, capsys)
    assert (code, out.strip()) == (0, "chatstudio check: no problems found")


@pytest.mark.parametrize(
    ("change", "code_name"),
    [
        ({"SECRET_KEY": None}, "secret_key_missing"),
        ({"SECRET_KEY": "your-secret-key-change-in-production"}, "secret_key_weak"),
        ({"SECRET_KEY": "short-key"}, "secret_key_weak"),
        ({"DEBUG": "true"}, "debug_on"),
        ({"ENABLE_DOCS": "true"}, "docs_enabled"),
        ({"DATABASE_URL": "postgresql://chat:pw@localhost/chat"}, "database_localhost"),
        ({"DATABASE_URL": "sqlite+aiosqlite:///./data/x.db"}, "database_sqlite"),
        ({"REDIS_PASSWORD": None}, "redis_no_password"),
        ({"SMTP_TLS": "none"}, "smtp_no_tls"),
        ({"PUBLIC_BASE_URL": "http://chat.example.com"}, "no_https"),
        ({"ALLOWED_ORIGINS": "*"}, "config_invalid"),
        ({"PORT": "eighty"}, "config_invalid"),
    ],
)
def test_each_problem_is_reported(
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str | None],
    code_name: str,
) -> None:
    for name, value in change.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    code, out = run(environment, monkeypatch, capsys)
    assert code == 1
    assert f"[{code_name}]" in out


def test_weak_key_finding_suggests_a_generated_key(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment["SECRET_KEY"] = "changeme"
    _, out = run(environment, monkeypatch, capsys)
    suggested = out.split("SECRET_KEY=", 2)[-1].split()[0]
    assert len(suggested) >= 48
    assert "changeme" not in suggested


@pytest.mark.parametrize(("mode", "flagged"), [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
def test_env_file_permissions(
    environment: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mode: int,
    flagged: bool,
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"SECRET_KEY={GOOD_KEY}\n")
    env_file.chmod(mode)
    code, out = run(environment, monkeypatch, capsys)
    assert ("[env_file_permissions]" in out) is flagged
    assert code == (1 if flagged else 0)


def test_check_generates_nothing(
    environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.pop("SECRET_KEY")
    environment["DEBUG"] = "true"
    environment["DATA_DIR"] = str(tmp_path / "data")
    run(environment, monkeypatch, capsys)
    assert not (tmp_path / "data").exists()
