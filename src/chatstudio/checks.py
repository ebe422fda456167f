"""`chatstudio check`: the deployment checklist's hardening items, read from the configuration."""

from __future__ import annotations

import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from chatstudio.config import ConfigError, Settings, load_settings, secret_key_problem

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def check_settings(settings: Settings) -> list[Finding]:
    findings: list[Finding] = []
    suggestion = f"e.g. SECRET_KEY={secrets.token_urlsafe(48)}"
    key = settings.secret_key.get_secret_value() if settings.secret_key else None
    if key is None:
        findings.append(Finding("secret_key_missing", f"SECRET_KEY is not set; {suggestion}"))
    else:
        problem = secret_key_problem(key, settings.algorithm)
        if problem:
            findings.append(Finding("secret_key_weak", f"SECRET_KEY {problem}; {suggestion}"))
    if settings.debug:
        findings.append(Finding("debug_on", "DEBUG is true; set DEBUG=false in production"))
    if settings.docs_enabled:
        findings.append(Finding("docs_enabled", "API docs are served (/docs, /openapi.json); set ENABLE_DOCS=false"))
    if any(o in ("*", "null") for o in settings.allowed_origins):
        findings.append(Finding("cors_wildcard", "ALLOWED_ORIGINS contains * or null; list exact origins"))
    if settings.is_sqlite:
        findings.append(Finding("database_sqlite", "DATABASE_URL is SQLite; use PostgreSQL or MySQL in production"))
    elif _host(settings.database_url) in _LOCAL_HOSTS:
        findings.append(
            Finding("database_localhost", "DATABASE_URL points at localhost; is the database really on this host?")
        )
    if settings.redis_url:
        has_password = bool(settings.redis_password) or bool(urlsplit(settings.redis_url).password)
        if not has_password:
            findings.append(Finding("redis_no_password", "Redis is used without a password; set REDIS_PASSWORD"))
    if settings.smtp_host and settings.smtp_tls == "none":
        findings.append(Finding("smtp_no_tls", "SMTP_TLS=none sends mail (and SMTP_PASSWORD) in clear text"))
    if not settings.public_base_url.startswith("https://"):
        findings.append(
            Finding("no_https", "PUBLIC_BASE_URL is not https://; serve the API over TLS (see deploy/nginx)")
        )
    return findings


def check_env_files(paths: Iterable[Path]) -> list[Finding]:
    """An env file holds secrets: nobody but its owner may read it (600 or 400)."""
    findings = []
    for path in paths:
        if not path.is_file():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            findings.append(Finding("env_file_permissions", f"{path} is mode {mode:o}; run: chmod 600 {path}"))
    return findings


def run_checks(env_files: Iterable[Path]) -> list[Finding]:
    findings = check_env_files(list(env_files))
    try:
        # Settings() validates values but, unlike load_settings(), does not refuse a weak key or
        # generate one: the check reports instead of acting.
        settings = Settings()
    except ValidationError:
        try:
            load_settings()
        except ConfigError as exc:
            return [*findings, Finding("config_invalid", str(exc))]
        raise
    return [*findings, *check_settings(settings)]
