"""Whole-database operations for operators: backup, restore, and the lock that keeps replicas from
migrating (or a restore from running) at the same time.

Backups use each database's own tool and format: `pg_dump --format=custom` (restored with
`pg_restore`), `mysqldump`/`mariadb-dump` SQL in one consistent transaction, and SQLite's online backup
API (a consistent copy while the server keeps writing). Passwords reach the tools through the
environment or a private option file, never the command line, where any user could read them in `ps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

PG_MAGIC = b"PGDMP"
SQLITE_MAGIC = b"SQLite format 3\x00"
LOCK_NAME = "chatstudio_migrate"
# pg_advisory_lock takes a bigint: a fixed number derived once from LOCK_NAME.
PG_LOCK_KEY = 0x63_68_61_74_73_74_75_64
LOCK_TIMEOUT_SECONDS = 600
SUFFIXES = {"postgresql": ".dump", "mysql": ".sql", "sqlite": ".sqlite3"}


class BackupError(Exception):
    """A backup or restore that could not be done; the message is meant for the operator."""


@dataclass(frozen=True)
class Target:
    kind: str  # postgresql | mysql | sqlite
    url: URL

    @classmethod
    def parse(cls, database_url: str) -> Target:
        url = make_url(database_url)
        backend = url.get_backend_name()
        kind = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}.get(backend)
        if kind is None:
            raise BackupError(f"unsupported database: {backend}")
        return cls(kind, url)

    @property
    def sqlite_path(self) -> Path:
        database = self.url.database
        if not database or database == ":memory:":
            raise BackupError("an in-memory SQLite database cannot be backed up")
        return Path(database)


def default_backup_path(database_url: str, directory: Path) -> Path:
    target = Target.parse(database_url)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return directory / f"chatstudio-{target.kind}-{stamp}{SUFFIXES[target.kind]}"


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BackupError(f"{' or '.join(names)} is not installed (the database client tools are needed)")


def _run(command: list[str], env: dict[str, str], what: str, stdin: Path | None = None) -> None:
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        result = subprocess.run(command, env=env, stdin=source, capture_output=True, check=False)  # noqa: S603
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise BackupError(f"{what} failed: {detail[-1] if detail else f'exit {result.returncode}'}")


def _pg_env(url: URL) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in (
        ("PGHOST", url.host),
        ("PGPORT", url.port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value is not None:
            env[name] = str(value)
    ssl = url.query.get("ssl") or url.query.get("sslmode")
    if isinstance(ssl, str):
        env["PGSSLMODE"] = {"true": "require"}.get(ssl, ssl)
    return env


@contextlib.contextmanager
def _mysql_options(url: URL) -> Iterator[list[str]]:
    """A private option file carrying host, user and password, deleted afterwards."""
    lines = ["[client]"]
    for key, value in (("host", url.host), ("port", url.port), ("user", url.username), ("password", url.password)):
        if value is not None:
            lines.append(f'{key}="{str(value).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"')
    lines.append("default-character-set=utf8mb4")
    fd, name = tempfile.mkstemp(prefix="chatstudio-my-", suffix=".cnf")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
            handle.write("\n".join(lines) + "\n")
        yield [f"--defaults-extra-file={name}"]
    finally:
        os.unlink(name)


def backup(database_url: str, destination: Path) -> Path:
    """Write a backup of the database to `destination` (a file that must not exist yet)."""
    target = Target.parse(database_url)
    destination = destination.resolve()
    if destination.exists():
        raise BackupError(f"{destination} exists; choose a new file")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    try:
        if target.kind == "postgresql":
            command = [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={partial}"]
            _run(command, _pg_env(target.url), "pg_dump")
        elif target.kind == "mysql":
            with _mysql_options(target.url) as options:
                command = [
                    _tool("mariadb-dump", "mysqldump"),
                    *options,
                    "--single-transaction",
                    "--routines",
                    "--triggers",
                    "--no-tablespaces",
                    "--hex-blob",
                    f"--result-file={partial}",
                    str(target.url.database),
                ]
                _run(command, dict(os.environ), "mysqldump")
        else:
            _sqlite_copy(target.sqlite_path, partial)
        os.chmod(partial, 0o600)  # a backup holds every user's data and password hashes
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def _sqlite_copy(source: Path, destination: Path) -> None:
    if not source.exists():
        raise BackupError(f"{source} does not exist")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(destination)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def check_backup(database_url: str, source: Path) -> str:
    """The kind of database `source` is a backup of, refusing one that does not fit the target."""
    target = Target.parse(database_url)
    if not source.is_file():
        raise BackupError(f"{source} is not a file")
    with source.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(PG_MAGIC):
        found = "postgresql"
    elif head.startswith(SQLITE_MAGIC):
        found = "sqlite"
    elif b"MySQL dump" in head or b"MariaDB dump" in head or head.lstrip().startswith((b"--", b"/*")):
        found = "mysql"
    else:
        raise BackupError(f"{source} is not a backup made by `chatstudio backup`")
    if found != target.kind:
        raise BackupError(f"{source} is a {found} backup; the configured database is {target.kind}")
    return found


def restore(database_url: str, source: Path) -> None:
    """Replace the database's contents with the backup in `source`. Stop the servers first."""
    target = Target.parse(database_url)
    check_backup(database_url, source)
    with migration_lock(database_url):
        if target.kind == "postgresql":
            command = [
                _tool("pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                f"--dbname={target.url.database}",
                str(source),
            ]
            _run(command, _pg_env(target.url), "pg_restore")
        elif target.kind == "mysql":
            with _mysql_options(target.url) as options:
                command = [_tool("mariadb", "mysql"), *options, str(target.url.database)]
                _run(command, dict(os.environ), "mysql", stdin=source)
        else:
            _sqlite_restore(source, target.sqlite_path)


def _sqlite_restore(source: Path, destination: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(destination, timeout=30)
    try:
        # The backup API replaces every page of the destination, under its lock, in one step.
        src.backup(dst)
    finally:
        dst.close()
        src.close()


# the migration lock


@contextlib.contextmanager
def migration_lock(database_url: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Held while migrating or restoring, so replicas starting together take turns.

    PostgreSQL: a session advisory lock; MySQL/MariaDB: GET_LOCK; SQLite: an flock on a file beside
    the database (only processes on one host share a SQLite file anyway). The database locks are held
    by a connection on a thread of its own, because Alembic runs its own event loop meanwhile.
    """
    target = Target.parse(database_url)
    if target.kind == "sqlite":
        with _file_lock(target):
            yield
        return
    holder = _LockHolder(database_url, target.kind, timeout)
    holder.acquire()
    try:
        yield
    finally:
        holder.release()


@contextlib.contextmanager
def _file_lock(target: Target) -> Iterator[None]:
    database = target.url.database
    if not database or database == ":memory:":
        yield
        return
    path = Path(database).resolve().with_name(Path(database).name + ".migrate-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _LockHolder:
    def __init__(self, database_url: str, kind: str, timeout: float) -> None:
        self.database_url = database_url
        self.kind = kind
        self.timeout = timeout
        self.acquired = threading.Event()
        self.release_requested = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="migration-lock", daemon=True)

    def acquire(self) -> None:
        self.thread.start()
        self.acquired.wait()
        if self.error is not None:
            self.thread.join()
            raise BackupError(f"could not take the migration lock: {self.error}") from self.error

    def release(self) -> None:
        self.release_requested.set()
        self.thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._hold())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self.error = exc
            self.acquired.set()

    async def _hold(self) -> None:
        from chatstudio.db import create_engine

        engine = create_engine(self.database_url, pooled=False)
        try:
            async with engine.connect() as conn:
                if self.kind == "postgresql":
                    await conn.execute(text(f"SET lock_timeout = '{int(self.timeout * 1000)}ms'"))
                    await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
                else:
                    got = await conn.scalar(
                        text("SELECT GET_LOCK(:name, :timeout)"), {"name": LOCK_NAME, "timeout": int(self.timeout)}
                    )
                    if got != 1:
                        raise TimeoutError(f"another process held it for {self.timeout:g} s")
                await conn.commit()
                self.acquired.set()
                await asyncio.to_thread(self.release_requested.wait)
                if self.kind == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
                else:
                    await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": LOCK_NAME})
                await conn.commit()
        finally:
            await engine.dispose()


def locked_upgrade(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade` under the migration lock: the first replica migrates, the others then find
    the database at head and have nothing to do."""
    from chatstudio import migrate

    with migration_lock(database_url):
        migrate.upgrade(database_url, revision)
