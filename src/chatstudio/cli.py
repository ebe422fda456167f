"""`chatstudio serve | migrate | create-admin`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import pathlib
import sys
from collections.abc import Sequence

from chatstudio import __version__
from chatstudio.config import ConfigError, Settings, load_settings


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"chatstudio: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings_or_exit()
    if args.migrate:
        _migrate(settings)
    reload = settings.reload if args.reload is None else args.reload
    workers = args.workers or settings.workers
    from chatstudio.observability.serving import prepare_server

    observed = prepare_server(settings, workers=1 if reload else workers, host=args.host or settings.host)
    uvicorn.run(
        "chatstudio.main:create_served_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=None if reload else workers,
        reload=reload,
        reload_dirs=[os.path.dirname(__file__)] if reload else None,
        log_level=settings.log_level,
        proxy_headers=False,
        server_header=False,
        # The sans-I/O protocol keeps an idle socket to its buffers and one ping timer; the default
        # implementation runs three tasks per connection (issue 4's per-socket memory budget).
        ws="websockets-sansio",
        # httptools, with a response's head sent in one write with its body's first bytes.
        http="chatstudio.http_protocol:HttpProtocol",
        # Longer than the turns' own grace, so they end with a stored reply and a final event.
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 10,
        **observed,
    )
    return 0


def _migrate(settings: Settings, revision: str = "head") -> None:
    from chatstudio.backup import locked_upgrade

    if settings.is_sqlite:
        # Make the data directory before SQLite is asked to create a file in it.
        os.makedirs(settings.data_dir, exist_ok=True)
    # Under a lock: replicas started together must not run the same migration at once.
    locked_upgrade(settings.database_url, revision)


def cmd_backup(args: argparse.Namespace) -> int:
    from chatstudio.backup import BackupError, backup, default_backup_path

    settings = _settings_or_exit()
    destination = args.output or default_backup_path(settings.database_url, args.dir or settings.data_dir / "backups")
    try:
        written = backup(settings.database_url, destination)
    except BackupError as exc:
        print(f"chatstudio: backup failed: {exc}", file=sys.stderr)
        return 1
    print(written)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from chatstudio.backup import BackupError, check_backup, restore

    settings = _settings_or_exit()
    try:
        check_backup(settings.database_url, args.file)
        if not args.yes:
            if not sys.stdin.isatty():
                print("chatstudio: restore replaces the database's contents; add --yes to confirm", file=sys.stderr)
                return 2
            if input(f"Replace the database's contents with {args.file}? [y/N] ").strip().lower() != "y":
                return 1
        restore(settings.database_url, args.file)
    except BackupError as exc:
        print(f"chatstudio: restore failed: {exc}", file=sys.stderr)
        return 1
    print(f"restored {args.file}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    if args.downgrade:
        from chatstudio import migrate

        migrate.downgrade(settings.database_url, args.downgrade)
        print(f"downgraded to {args.downgrade}")
        return 0
    _migrate(settings, args.revision)
    print(f"database is at {args.revision}")
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from chatstudio.db import create_engine, create_sessionmaker, session_scope
    from chatstudio.errors import AppError
    from chatstudio.users.service import AuthService

    settings = _settings_or_exit()
    password = args.password or os.environ.get("CHATSTUDIO_ADMIN_PASSWORD")
    if password is None and sys.stdin.isatty():
        password = getpass.getpass("Password for the admin (empty keeps an existing one): ") or None

    async def run() -> tuple[str, bool]:
        engine = create_engine(settings.database_url, pooled=False)
        result: tuple[str, bool] | None = None
        try:
            # The result leaves the block normally so session_scope commits it.
            async with session_scope(create_sessionmaker(engine)) as session:
                user, created = await AuthService(session, settings).ensure_admin(email=args.email, password=password)
                result = (user.email, created)
        finally:
            await engine.dispose()
        assert result is not None
        return result

    try:
        email, created = asyncio.run(run())
    except AppError as exc:
        print(f"chatstudio: {exc.message}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        # Most often an unmigrated or unreachable database; the class name is enough to act on.
        print(f"chatstudio: database error ({type(exc).__name__}); run `chatstudio migrate` first?", file=sys.stderr)
        return 1
    print(f"{'created' if created else 'promoted'} admin {email}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chatstudio.checks import run_checks

    env_files = [Path(p) for p in args.env_file] or [Path(".env"), Path(".env.production")]
    findings = run_checks(env_files)
    for finding in findings:
        print(finding)
    if findings:
        print(f"chatstudio check: {len(findings)} problem(s) found", file=sys.stderr)
        return 1
    print("chatstudio check: no problems found")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatstudio", description="AI Chat Studio backend")
    parser.add_argument("--version", action="version", version=f"chatstudio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server (HOST, PORT, WORKERS, RELOAD, LOG_LEVEL)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--reload", action=argparse.BooleanOptionalAction, default=None)
    serve.add_argument("--migrate", action="store_true", help="apply migrations before serving")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    migrate.set_defaults(func=cmd_migrate)

    backup = sub.add_parser("backup", help="back up the database (pg_dump, mysqldump or SQLite's backup API)")
    backup.add_argument(
        "--output", "-o", type=pathlib.Path, help="the backup file (default: DIR/chatstudio-KIND-TIME.*)"
    )
    backup.add_argument(
        "--dir", type=pathlib.Path, help="directory for a default-named backup (default: DATA_DIR/backups)"
    )
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser("restore", help="replace the database's contents with a backup (stop the servers first)")
    restore.add_argument("file", type=pathlib.Path)
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.set_defaults(func=cmd_restore)

    admin = sub.add_parser("create-admin", help="create an admin account or promote an existing one")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help="or CHATSTUDIO_ADMIN_PASSWORD, or asked for on a terminal")
    admin.set_defaults(func=cmd_create_admin)
    check = sub.add_parser("check", help="report insecure production settings; exit 1 when any is found")
    check.add_argument("--env-file", action="append", default=[], help="env file(s) whose permissions to check")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
