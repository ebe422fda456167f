"""The real `chatstudio` console script: migrate, configuration errors at start-up, serve (one and two
workers), and create-admin checked through the API."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from chatstudio import __version__, migrate
from chatstudio.main import create_app
from tests.conftest import STRONG_PASSWORD, make_settings
from tests.helpers_proc import GRACEFUL_EXIT_CODES, child_pids, clean_env, run_cli, running_server

SECRET_KEY = "q7Lm2-Xv9Rt4_Kp8Zw3Ny6Bc1Hd5Fg0Js"
GENERATE_HINT = "secrets.token_urlsafe"
SCHEMA_TABLES = {"user_account", "auth_session", "refresh_token", "conversation", "message", "alembic_version"}


def _tables(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _env(tmp_path: Path, db: Path, **values: str) -> dict[str, str]:
    """A clean environment for the CLI on database `db`; a value of "" leaves that variable out."""
    base = {
        "DATABASE_URL": f"sqlite:///{db}",  # the plain form, as an operator writes it
        "DATA_DIR": str(tmp_path / "data"),
        "SECRET_KEY": SECRET_KEY,
        "DEBUG": "false",
        "LOCAL_MODEL_ENABLED": "false",
    }
    base.update(values)
    return clean_env(**{name: value for name, value in base.items() if value != ""})


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database built by `chatstudio migrate`, copied for each test that needs a migrated one."""
    work = tmp_path_factory.mktemp("template")
    db = work / "template.db"
    result = run_cli("migrate", cwd=work, env=_env(work, db))
    assert result.returncode == 0, result.stderr
    return db


@pytest.fixture
def migrated_db(migrated_template: Path, tmp_path: Path) -> Path:
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(migrated_template)) as src, contextlib.closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    return db


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_migrate_creates_the_tables_in_a_fresh_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "fresh.db"
    result = run_cli("migrate", cwd=tmp_path, env=_env(tmp_path, db))
    assert result.returncode == 0, result.stderr
    assert "database is at head" in result.stdout
    assert _tables(db) >= SCHEMA_TABLES
    with contextlib.closing(sqlite3.connect(db)) as conn:
        versions = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
    assert versions == set(migrate.current_heads())


def test_serve_without_secret_key_in_production_exits_2(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, env=_env(tmp_path, tmp_path / "app.db", SECRET_KEY=""))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("chatstudio: configuration error: ")
    assert "SECRET_KEY" in line
    assert GENERATE_HINT in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("placeholder", ["your-very-secure-random-secret-key-here", "changeme"])
def test_serve_refuses_a_placeholder_secret_key(tmp_path: Path, placeholder: str) -> None:
    result = run_cli("serve", cwd=tmp_path, env=_env(tmp_path, tmp_path / "app.db", SECRET_KEY=placeholder))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("chatstudio: configuration error: SECRET_KEY")
    assert "placeholder" in line
    assert GENERATE_HINT in line


def test_serve_with_an_invalid_port_exits_2_naming_port(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, env=_env(tmp_path, tmp_path / "app.db", PORT="abc"))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("chatstudio: configuration error: invalid PORT:")


def test_configuration_error_comes_from_the_env_file_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ALGORITHM=RS256  # not supported\n")
    result = run_cli("serve", cwd=tmp_path, env=_env(tmp_path, tmp_path / "app.db"))
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith("chatstudio: configuration error: invalid ALGORITHM:")


@pytest.mark.e2e
def test_serve_migrate_in_debug_answers_and_keeps_a_private_key(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    env = _env(tmp_path, db, DEBUG="true", SECRET_KEY="")
    with running_server("--migrate", cwd=tmp_path, env=env) as server:
        health = server.wait_until_up("/health")
        assert health.json() == {"status": "ok", "version": __version__}
        key_file = tmp_path / "data" / "secret_key"
        assert key_file.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        with httpx.Client(base_url=server.base_url, timeout=10, trust_env=False) as client:
            assert client.get("/health/ready").status_code == 200
            assert client.get("/docs").status_code == 200  # DEBUG turns docs on
            # Tables exist and the generated key signs tokens.
            body = {"email": "e2e@example.com", "password": STRONG_PASSWORD}
            assert client.post("/api/v1/auth/register", json=body).status_code == 201
            assert client.post("/api/v1/auth/login", json=body).status_code == 200
        assert server.stop() in GRACEFUL_EXIT_CODES
        assert "Application shutdown complete" in server.log()
    assert _tables(db) >= SCHEMA_TABLES


@pytest.mark.e2e
def test_serve_starts_the_configured_number_of_workers(migrated_db: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, migrated_db, WORKERS="2", LOG_LEVEL="info")
    with running_server(cwd=tmp_path, env=env) as server:
        assert server.wait_until_up("/health").json()["status"] == "ok"
        workers = {int(pid) for pid in server.wait_for_log(r"Started server process \[(\d+)\]", count=2)}
        assert len(workers) == 2
        assert server.pid not in workers
        assert workers <= child_pids(server.pid)
        server.wait_for_log(r"Application startup complete", count=2)
        assert server.stop() in GRACEFUL_EXIT_CODES
        log = server.log()
    for pid in workers:
        assert f"Finished server process [{pid}]" in log
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()


async def _role_after_login(db: Path, data_dir: Path, email: str, password: str = STRONG_PASSWORD) -> str:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{db}", data_dir=data_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            login = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200, me.text
            return str(me.json()["role"])


async def _register(db: Path, data_dir: Path, email: str) -> str:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{db}", data_dir=data_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            created = await client.post("/api/v1/auth/register", json={"email": email, "password": STRONG_PASSWORD})
            assert created.status_code == 201, created.text
            return str(created.json()["role"])


async def test_create_admin_creates_then_promotes(migrated_db: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, migrated_db)
    first = run_cli("create-admin", "--email", "a@example.com", "--password", STRONG_PASSWORD, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "created admin a@example.com"

    second = run_cli("create-admin", "--email", "a@example.com", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "promoted admin a@example.com"

    assert await _role_after_login(migrated_db, tmp_path, "a@example.com") == "admin"


async def test_create_admin_promotes_a_registered_user(migrated_db: Path, tmp_path: Path) -> None:
    assert await _register(migrated_db, tmp_path, "bob@example.com") == "user"
    result = run_cli("create-admin", "--email", "bob@example.com", cwd=tmp_path, env=_env(tmp_path, migrated_db))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "promoted admin bob@example.com"
    # The promotion must be committed, not merely printed.
    assert await _role_after_login(migrated_db, tmp_path, "bob@example.com") == "admin"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--password", "password123"], "too common"),
        ([], "password is required"),
    ],
    ids=["weak-password", "no-password"],
)
def test_create_admin_refuses_without_a_usable_password(
    migrated_db: Path, tmp_path: Path, extra: list[str], expected: str
) -> None:
    result = run_cli(
        "create-admin", "--email", "weak@example.com", *extra, cwd=tmp_path, env=_env(tmp_path, migrated_db)
    )
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line.startswith("chatstudio: ")
    assert expected in line.lower()
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    with contextlib.closing(sqlite3.connect(migrated_db)) as conn:
        assert conn.execute("SELECT count(*) FROM user_account").fetchone() == (0,)
