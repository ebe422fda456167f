"""Helpers for the deployment tests: the real tools (nginx, promtool, shellcheck, openssl), a
throw-away certificate, and the shipped nginx.conf rendered for loopback ports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import services_required

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"


def require_tool(name: str) -> str:
    """The tool's path; a skip when it is not installed, a failure when CHATSTUDIO_REQUIRE_SERVICES is set."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed (apt-get install nginx prometheus shellcheck openssl)"
        if services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def run(*command: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, valid for a day; it is its own CA."""
    openssl = require_tool("openssl")
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    result = run(
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return cert, key


def render_nginx(
    work: Path, *, http_port: int, https_port: int, backends: tuple[str, str], cert: Path, key: Path
) -> Path:
    """The shipped config with only addresses and file paths changed, so it runs unprivileged on loopback.

    Every replacement must match exactly once: if the shipped file changes shape, this fails loudly
    instead of testing something else.
    """
    temp = work / "tmp"
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / name).mkdir(parents=True, exist_ok=True)
        (temp / name).chmod(0o777)  # workers run as an unprivileged user when nginx starts as root
    (work / "certbot").mkdir(exist_ok=True)
    temp_paths = "".join(
        f"    {kind}_temp_path {temp / name};\n"
        for kind, name in (
            ("client_body", "body"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        )
    )
    replacements = [
        ("user nginx;\n", ""),
        ("pid /var/run/nginx.pid;", f"pid {work / 'nginx.pid'};"),
        ("error_log /var/log/nginx/error.log warn;", f"error_log {work / 'error.log'} warn;"),
        ("access_log /var/log/nginx/access.log main;", f"access_log {work / 'access.log'} main;"),
        ("http {\n", "http {\n" + temp_paths),
        ("server backend-1:8000 ", f"server {backends[0]} "),
        ("server backend-2:8000 ", f"server {backends[1]} "),
        ("        listen 80;\n", f"        listen 127.0.0.1:{http_port};\n"),
        ("        listen [::]:80;\n", ""),
        ("        listen 443 ssl http2;\n", f"        listen 127.0.0.1:{https_port} ssl http2;\n"),
        ("        listen [::]:443 ssl http2;\n", ""),
        ("/etc/nginx/certs/fullchain.pem", str(cert)),
        ("/etc/nginx/certs/privkey.pem", str(key)),
        ("root /var/www/certbot;", f"root {work / 'certbot'};"),
    ]
    text = NGINX_CONF.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, f"nginx.conf no longer has exactly one {old!r}"
        text = text.replace(old, new)
    if not Path("/etc/nginx/mime.types").exists():
        text = text.replace("include /etc/nginx/mime.types;", "types { application/json json; }")
    target = work / "nginx.conf"
    target.write_text(text)
    return target


def nginx_command(nginx: str, conf: Path, *extra: str) -> list[str]:
    return [nginx, "-c", str(conf), "-p", str(conf.parent), "-e", str(conf.parent / "error.log"), *extra]
