"""deploy/lib.sh's env loading, deploy.sh's steps and automatic rollback (with `docker` and `git`
stand-ins that record what they are asked), and verify.sh against a real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.conftest import STRONG_PASSWORD
from tests.deploy.support import DEPLOY, require_tool
from tests.e2e.conftest import e2e_server

BASH = shutil.which("bash") or "/bin/bash"


def bash(
    script: str, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )


# load_env_file


def test_env_file_is_read_literally(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    env_file = tmp_path / "env"
    env_file.write_text(
        "# a comment\n"
        "\n"
        "PLAIN=value\n"
        "SPACES=AI Chat Studio <no-reply@example.com>\n"
        "COMMENTED=10485760       # 10 MB\n"
        "HASH_INSIDE=pa#ss   \n"
        'DOUBLE="quoted value"  # comment\n'
        "SINGLE='it''s'\n"
        f"SUBST=$(touch {marker})\n"
        f"BACKTICKS=`touch {marker}`\n"
        "DOLLAR=$HOME and ${PATH}\n"
        "GLOB=*\n"
        "export EXPORTED=yes\n"
        "CRLF=windows\r\n"
        "EMPTY=\n"
        "  INDENTED = no\n"
    )
    script = f"""
set -euo pipefail
. {DEPLOY / "lib.sh"}
load_env_file {env_file} 2>&1 && echo loaded || echo refused
"""
    refused = bash(script)
    assert "not a KEY=VALUE line" in refused.stdout
    assert "refused" in refused.stdout
    env_file.write_text(env_file.read_text().replace("  INDENTED = no\n", ""))
    names = ["PLAIN", "SPACES", "COMMENTED", "HASH_INSIDE", "DOUBLE", "SINGLE", "SUBST", "BACKTICKS", "DOLLAR", "GLOB",
             "EXPORTED", "CRLF", "EMPTY"]  # fmt: skip
    dump = "; ".join(f'printf "%s=[%s]\\n" {n} "${{{n}-unset}}"' for n in names)
    result = bash(f". {DEPLOY / 'lib.sh'}; load_env_file {env_file}; {dump}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert values == {
        "PLAIN": "[value]",
        "SPACES": "[AI Chat Studio <no-reply@example.com>]",
        "COMMENTED": "[10485760]",
        "HASH_INSIDE": "[pa#ss]",
        "DOUBLE": "[quoted value]",
        "SINGLE": "['it''s']",
        "SUBST": f"[$(touch {marker})]",
        "BACKTICKS": f"[`touch {marker}`]",
        "DOLLAR": "[$HOME and ${PATH}]",
        "GLOB": "[*]",
        "EXPORTED": "[yes]",
        "CRLF": "[windows]",
        "EMPTY": "[]",
    }
    assert not marker.exists()


# deploy.sh with stand-ins


FAKE_DOCKER = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_LOG"
case "$*" in
    "image inspect chatstudio:latest") [[ -n ${FAKE_PREVIOUS:-} ]]; exit ;;
    "image inspect --format {{.Id}} chatstudio:latest") echo "sha256:current" ;;
    "run --rm --entrypoint python chatstudio:latest -c "*) echo "$FAKE_NEW_HEADS" ;;
    "run --rm --entrypoint python chatstudio:previous -c "*) echo "$FAKE_OLD_HEADS" ;;
esac
exit 0
"""


@pytest.fixture
def health_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status":"ok"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health/ready"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_deploy(tmp_path: Path, health_url: str, **fake: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    require_tool("curl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "git").write_text("#!/bin/sh\necho v0.1.0-test\n")
    for tool in ("docker", "git"):
        (bin_dir / tool).chmod(0o755)
    env_file = tmp_path / ".env.production"
    env_file.write_text((DEPLOY / ".env.production.example").read_text())
    log = tmp_path / "docker.log"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "HEALTH_URL": health_url,
        "HEALTH_TIMEOUT": "1",
        **fake,
    }
    result = subprocess.run(
        [str(DEPLOY / "deploy.sh"), str(env_file)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    return result, log.read_text().splitlines() if log.exists() else []


def _index(calls: list[str], fragment: str) -> int:
    found = [i for i, call in enumerate(calls) if fragment in call]
    assert found, f"no call with {fragment!r} in:\n" + "\n".join(calls)
    return found[0]


def test_deploy_runs_its_steps_in_order(tmp_path: Path, health_server: str) -> None:
    result, calls = run_deploy(tmp_path, health_server, FAKE_PREVIOUS="1", FAKE_NEW_HEADS="0006", FAKE_OLD_HEADS="0005")
    assert result.returncode == 0, result.stdout + result.stderr
    order = [
        _index(calls, "tag chatstudio:latest chatstudio:previous"),
        _index(calls, "build backend-1"),
        _index(calls, "backend-1 check"),
        _index(calls, "up -d --wait postgres redis"),
        _index(calls, "backend-1 backup --output /app/data/backups/pre-deploy-"),
        _index(calls, "backend-1 migrate"),
        _index(calls, "up -d --no-build --remove-orphans"),
    ]
    assert order == sorted(order)
    assert not any("restore" in call for call in calls)
    assert "deployed sha256:current" in result.stdout


def test_failed_health_gate_rolls_back_image_and_database(tmp_path: Path) -> None:
    result, calls = run_deploy(
        tmp_path, "http://127.0.0.1:1/health/ready", FAKE_PREVIOUS="1", FAKE_NEW_HEADS="0006", FAKE_OLD_HEADS="0005"
    )
    assert result.returncode == 1
    backup = next(call for call in calls if " backup --output " in call).rsplit(" ", 1)[1]
    rollback = [
        _index(calls, "tag chatstudio:previous chatstudio:latest"),
        _index(calls, "stop backend-1 backend-2"),
        _index(calls, f"backend-1 restore --yes {backup}"),
        _index(calls, "up -d --no-build backend-1 backend-2 nginx"),
    ]
    assert rollback == sorted(rollback)
    assert rollback[0] > _index(calls, "up -d --no-build --remove-orphans")
    assert "rollback" in result.stdout


def test_rollback_without_a_migration_keeps_the_database(tmp_path: Path) -> None:
    result, calls = run_deploy(
        tmp_path, "http://127.0.0.1:1/health/ready", FAKE_PREVIOUS="1", FAKE_NEW_HEADS="0005", FAKE_OLD_HEADS="0005"
    )
    assert result.returncode == 1
    assert any("tag chatstudio:previous chatstudio:latest" in call for call in calls)
    assert not any(" restore " in call for call in calls)


def test_a_failed_first_deployment_stops_the_backends(tmp_path: Path) -> None:
    result, calls = run_deploy(tmp_path, "http://127.0.0.1:1/health/ready", FAKE_NEW_HEADS="0005", FAKE_OLD_HEADS="")
    assert result.returncode == 1
    assert any(call.endswith("stop backend-1 backend-2") for call in calls)
    assert not any("tag chatstudio:previous" in call for call in calls)
    assert "first deployment failed" in result.stderr


def test_deploy_refuses_a_malformed_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text("THIS IS NOT AN ASSIGNMENT\n")
    result = subprocess.run(
        [str(DEPLOY / "deploy.sh"), str(env_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "not a KEY=VALUE line" in result.stderr


# verify.sh against a real server


SMOKE_MODEL = "openai/gpt-test"
METRICS_TOKEN = "verify-metrics-token-0123456789"


@pytest.mark.e2e
def test_verify_passes_on_a_healthy_server_and_runs_a_chat(tmp_path: Path) -> None:
    require_tool("curl")
    with FakeUpstream() as upstream, e2e_server(upstream, tmp_path, METRICS_TOKEN=METRICS_TOKEN) as server:
        account = {"email": "smoke@example.com", "password": STRONG_PASSWORD}
        assert httpx.post(f"{server.base_url}/api/v1/auth/register", json=account, trust_env=False).status_code == 201
        env = {
            **os.environ,
            "SMOKE_EMAIL": account["email"],
            "SMOKE_PASSWORD": account["password"],
            "SMOKE_MODEL": SMOKE_MODEL,
        }
        result = subprocess.run(
            [str(DEPLOY / "verify.sh"), server.base_url],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"chat round trip ({SMOKE_MODEL})" in result.stdout
        assert "/docs is not public (404)" in result.stdout
        assert "/metrics is not public (401)" in result.stdout
        assert STRONG_PASSWORD not in result.stdout + result.stderr
        # the smoke conversation was deleted again
        token = httpx.post(f"{server.base_url}/api/v1/auth/login", json=account, trust_env=False).json()["access_token"]
        listed = httpx.get(
            f"{server.base_url}/api/v1/conversations", headers={"Authorization": f"Bearer {token}"}, trust_env=False
        )
        assert listed.json()["items"] == []


@pytest.mark.e2e
def test_verify_fails_when_docs_are_public(tmp_path: Path) -> None:
    require_tool("curl")
    with FakeUpstream() as upstream, e2e_server(upstream, tmp_path, ENABLE_DOCS="true") as server:
        result = subprocess.run(
            [str(DEPLOY / "verify.sh"), server.base_url], capture_output=True, text=True, timeout=120, check=False
        )
    assert result.returncode == 1
    assert "FAIL  /docs answered 200" in result.stdout
