"""`chatstudio serve | migrate | create-admin`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
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
    uvicorn.run(
        "chatstudio.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=None if reload else workers,
        reload=reload,
        reload_dirs=[os.path.dirname(__file__)] if reload else None,
        log_level=settings.log_level,
        proxy_headers=False,
        server_header=False,
        # Longer than the turns' own grace, so they end with a stored reply and a final event.
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 10,
    )
    return 0


def _migrate(settings: Settings, revision: str = "head") -> None:
    from chatstudio import migrate

    if settings.is_sqlite:
        # Make the data directory before SQLite is asked to create a file in it.
        os.makedirs(settings.data_dir, exist_ok=True)
    migrate.upgrade(settings.database_url, revision)


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

    admin = sub.add_parser("create-admin", help="create an admin account or promote an existing one")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help="or CHATSTUDIO_ADMIN_PASSWORD, or asked for on a terminal")
    admin.set_defaults(func=cmd_create_admin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
