"""`chatstudio backup` / `restore` round-trip real data on SQLite, PostgreSQL and MariaDB, and
`chatstudio migrate` takes turns with other replicas under the migration lock."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from chatstudio.backup import BackupError, Target, check_backup, migration_lock
from chatstudio.db import create_engine
from tests.conftest import TEST_SECRET_KEY, Backend, make_settings, running_app, sign_up
from tests.helpers_proc import chatstudio_command, clean_env, run_cli

POLL_DEADLINE_SECONDS = 30.0  # a guard against a hung test, never a speed assertion


def cli_env(backend: Backend, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=backend.url, SECRET_KEY=TEST_SECRET_KEY, DATA_DIR=str(tmp_path), LOCAL_MODEL_ENABLED="false"
    )


async def _titles(backend: Backend) -> list[str]:
    engine = create_engine(backend.url, pooled=False)
    try:
        async with engine.connect() as conn:
            return sorted(str(t) for t in (await conn.scalars(text("SELECT title FROM conversation"))).all())
    finally:
        await engine.dispose()


async def test_backup_and_restore_round_trip(backend: Backend, tmp_path: Path) -> None:
    settings = make_settings(backend.url, data_dir=tmp_path)
    async with running_app(settings, wipe=True) as (client, _):
        user = await sign_up(client, name="Zoë ☕")
        for title in ("first ✓", "second — with ünïcode"):
            created = await client.post("/api/v1/conversations", json={"title": title}, headers=user.headers)
            assert created.status_code == 201
        # the backup runs while the server is up and holding connections
        backup_file = tmp_path / "backups" / "b.bin"
        result = await asyncio.to_thread(
            run_cli, "backup", "--output", str(backup_file), cwd=tmp_path, env=cli_env(backend, tmp_path)
        )
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.strip()) == backup_file.resolve()
        assert backup_file.stat().st_mode & 0o777 == 0o600

        # afterwards: one conversation deleted, another added
        listed = (await client.get("/api/v1/conversations", headers=user.headers)).json()["items"]
        await client.delete(f"/api/v1/conversations/{listed[0]['id']}", headers=user.headers)
        await client.post("/api/v1/conversations", json={"title": "after the backup"}, headers=user.headers)
        assert await _titles(backend) != ["first ✓", "second — with ünïcode"]

        refused = await asyncio.to_thread(
            run_cli, "restore", str(backup_file), cwd=tmp_path, env=cli_env(backend, tmp_path)
        )
        assert refused.returncode == 2  # no terminal to confirm on, and no --yes
        assert "--yes" in refused.stderr

    restored = await asyncio.to_thread(
        run_cli, "restore", "--yes", str(backup_file), cwd=tmp_path, env=cli_env(backend, tmp_path)
    )
    assert restored.returncode == 0, restored.stderr
    assert await _titles(backend) == ["first ✓", "second — with ünïcode"]
    # and the restored database serves: the account signs in with its password
    async with running_app(settings, wipe=True) as (client, _):
        login = await client.post("/api/v1/auth/login", json={"email": user.email, "password": user.password})
        assert login.status_code == 200
        me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        assert me.json()["name"] == "Zoë ☕"


def test_restore_refuses_a_backup_of_another_kind(tmp_path: Path) -> None:
    dump = tmp_path / "x.dump"
    dump.write_bytes(b"PGDMP\x01\x0f\x00")
    with pytest.raises(BackupError, match="postgresql backup; the configured database is sqlite"):
        check_backup(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", dump)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 hello")
    with pytest.raises(BackupError, match="not a backup"):
        check_backup(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", junk)
    with pytest.raises(BackupError, match="not a file"):
        check_backup(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", tmp_path / "missing")


def test_backup_never_overwrites(tmp_path: Path) -> None:
    existing = tmp_path / "taken.sqlite3"
    existing.write_text("keep me")
    env = clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", SECRET_KEY=TEST_SECRET_KEY)
    result = run_cli("backup", "--output", str(existing), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "exists" in result.stderr
    assert existing.read_text() == "keep me"


def test_passwords_never_reach_the_command_line() -> None:
    target = Target.parse("postgresql+asyncpg://chat:pa%20ss%40word@db:5432/chat")
    assert target.url.password == "pa ss@word"
    from chatstudio.backup import _mysql_options, _pg_env

    assert _pg_env(target.url)["PGPASSWORD"] == "pa ss@word"
    with _mysql_options(Target.parse('mysql+aiomysql://root:q"uo\\te@db/x').url) as options:
        (option,) = options
        path = Path(option.split("=", 1)[1])
        assert path.stat().st_mode & 0o777 == 0o600
        assert 'password="q\\"uo\\\\te"' in path.read_text()
    assert not path.exists()


async def _waiting_on_lock(backend: Backend) -> bool:
    query = {
        "postgres": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        "mysql": "SELECT count(*) FROM information_schema.PROCESSLIST WHERE STATE = 'User lock'",
    }[backend.name]
    engine = create_engine(backend.url, pooled=False)
    try:
        async with engine.connect() as conn:
            return bool(await conn.scalar(text(query)))
    finally:
        await engine.dispose()


async def test_migrate_waits_for_the_lock(backend: Backend, tmp_path: Path) -> None:
    """While one replica holds the migration lock, another's `chatstudio migrate` waits, then finishes."""
    if backend.name == "sqlite":
        pytest.skip("SQLite takes a file lock; the wait is not observable from outside")
    with migration_lock(backend.url):
        process = subprocess.Popen(
            chatstudio_command("migrate"),
            cwd=tmp_path,
            env=cli_env(backend, tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + POLL_DEADLINE_SECONDS
            while not await _waiting_on_lock(backend):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "migrate never waited on the lock"
                await asyncio.sleep(0.1)
            assert process.poll() is None
        except BaseException:
            process.kill()
            process.communicate()
            raise
    out, err = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0, err
    assert b"database is at head" in out


def test_sqlite_lock_serialises_runs(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/locked.db"
    env = clean_env(DATABASE_URL=url, SECRET_KEY=TEST_SECRET_KEY, DATA_DIR=str(tmp_path))
    processes = [
        subprocess.Popen(
            chatstudio_command("migrate"), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert (tmp_path / "locked.db.migrate-lock").exists()
