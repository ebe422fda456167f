"""The shipped deployment files, checked by the real tools: `nginx -t`, `promtool`, shellcheck, and the
Compose and GitHub Actions schemas (check-jsonschema's vendored copies), plus what the tools cannot see."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

import chatstudio.observability.metrics  # noqa: F401 - registers the metrics whose names are checked
from chatstudio.config import Settings
from tests.deploy.support import (
    DEPLOY,
    NGINX_CONF,
    ROOT,
    make_certificate,
    nginx_command,
    render_nginx,
    require_tool,
    run,
)

COMPOSE = DEPLOY / "docker-compose.yml"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
ENV_EXAMPLE = DEPLOY / ".env.production.example"


def check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert found, "check-jsonschema (a dev dependency) is not installed"
    return found


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# nginx


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    cert, key = make_certificate(tmp_path)
    conf = render_nginx(
        tmp_path, http_port=8080, https_port=8443, backends=("127.0.0.1:18001", "127.0.0.1:18002"), cert=cert, key=key
    )
    result = run(*nginx_command(nginx, conf, "-t"))
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
    assert "test is successful" in result.stderr


def test_nginx_config_has_what_production_needs() -> None:
    text = NGINX_CONF.read_text()
    assert re.search(r"listen 80;.*?return 301 https://\$host\$request_uri;", text, re.S)
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "listen 443 ssl http2;" in text
    assert 'Strict-Transport-Security "max-age=' in text
    ws = re.search(r"location /ws/ \{(.*?)\}", text, re.S)
    assert ws
    assert "proxy_set_header Upgrade $http_upgrade;" in ws[1]
    assert "proxy_read_timeout 3600s;" in ws[1]
    stream = re.search(r"location ~ \^/api/v1/conversations/.*?\{(.*?)\}", text, re.S)
    assert stream
    assert "proxy_buffering off;" in stream[1]
    assert "gzip off;" in stream[1]
    assert "proxy_read_timeout 3600s;" in stream[1]
    assert "text/event-stream" not in re.search(r"gzip_types([^;]*);", text)[1]  # type: ignore[index]
    upstream = re.search(r"upstream chatstudio \{(.*?)\}", text, re.S)
    assert upstream
    assert len(re.findall(r"^\s*server ", upstream[1], re.M)) == 2
    assert "keepalive" in upstream[1]
    assert "limit_req_zone" in text
    assert "limit_req zone=" in text
    assert re.search(r"location = /metrics \{\s*return 404;", text)


def test_body_limit_matches_max_upload_size() -> None:
    match = re.search(r"client_max_body_size (\d+)m;", NGINX_CONF.read_text())
    assert match
    limit = int(match[1]) * 1024 * 1024
    upload = int(re.search(r"^MAX_UPLOAD_SIZE=(\d+)", ENV_EXAMPLE.read_text(), re.M)[1])  # type: ignore[index]
    assert upload == Settings(_env_file=None).max_upload_size  # type: ignore[call-arg]
    # Room for the multipart envelope around the largest file, and no more than that.
    assert upload < limit <= upload + 2 * 1024 * 1024


# prometheus


def test_promtool_checks_config_rules_and_rule_tests(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    for name in ("prometheus.yml", "alerts.yml", "alerts.test.yml"):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    token = tmp_path / "metrics_token"
    token.write_text("token-for-the-check\n")
    config = tmp_path / "prometheus.yml"
    text = config.read_text()
    assert "/etc/prometheus/alerts.yml" in text
    assert "/run/secrets/metrics_token" in text
    config.write_text(
        text.replace("/etc/prometheus/", f"{tmp_path}/").replace("/run/secrets/metrics_token", str(token))
    )
    for command in (
        ("check", "config", str(config)),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts.test.yml"),
    ):
        result = run(promtool, *command, cwd=tmp_path)
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}{result.stderr}"


def _expressions() -> list[str]:
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "chatstudio.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return exprs


def test_alerts_and_dashboard_use_metrics_that_exist() -> None:
    exported = set()
    for family in REGISTRY.collect():
        exported.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        exported.update(family.name + suffix for suffix in suffixes)
    used = {name for expr in _expressions() for name in re.findall(r"\b(chatstudio_[a-z_]+)", expr)}
    assert used, "no chatstudio metric is used"
    missing = used - exported
    assert not missing
    alerts = {rule["alert"] for g in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"] for rule in g["rules"]}
    assert alerts == {
        "ChatstudioInstanceDown",
        "ChatstudioHigh5xxRate",
        "ChatstudioHighP99Latency",
        "ChatstudioProviderErrorRate",
        "ChatstudioDatabasePoolSaturated",
        "ChatstudioRateLimitStorm",
    }


def test_grafana_is_provisioned() -> None:
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "chatstudio.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "chatstudio.json").read_text())
    assert all(p["datasource"]["uid"] == source["uid"] for p in dashboard["panels"])
    assert len(dashboard["panels"]) >= 10


# shell scripts


def test_scripts_pass_shellcheck() -> None:
    shellcheck = require_tool("shellcheck")
    scripts = sorted(str(p.relative_to(ROOT)) for p in DEPLOY.glob("*.sh"))
    assert {"deploy/deploy.sh", "deploy/verify.sh", "deploy/lib.sh", "deploy/docker-entrypoint.sh"} <= set(scripts)
    result = run(shellcheck, "-x", "--severity=style", *scripts, cwd=ROOT)
    assert result.returncode == 0, result.stdout


# compose, CI, image


def test_compose_file_validates_against_the_compose_schema() -> None:
    result = run(check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_structure() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) == {
        "backend-1",
        "backend-2",
        "postgres",
        "redis",
        "nginx",
        "prometheus",
        "grafana",
        "postgres-exporter",
        "redis-exporter",
    }
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
        for dependency in (service.get("depends_on") or {}).values():
            assert dependency["condition"] == "service_healthy", name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith("./") or source in compose["volumes"], f"{name}: {source} is not a named volume"
    backend = services["backend-1"]
    assert services["backend-2"]["image"] == backend["image"]
    assert backend["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "--requirepass" in redis_command
    assert "ports" not in backend
    assert "ports" not in services["postgres"]
    assert "ports" not in services["redis"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert {"80:80", "443:443"} == set(services["nginx"]["ports"])


def test_ci_workflow_validates_and_runs_make_test() -> None:
    result = run(check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW))
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = load_yaml(WORKFLOW)
    test = workflow["jobs"]["test"]
    assert {"postgres", "mariadb", "redis"} <= set(test["services"])
    steps = " ".join(str(step.get("run", "")) for step in test["steps"])
    assert "make test" in steps
    assert "nginx prometheus shellcheck" in steps
    image = " ".join(str(step.get("run", "")) for step in workflow["jobs"]["image"]["steps"])
    assert "-f deploy/Dockerfile" in image


def test_dockerfile_shape() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert [stage for _, stage in stages] == ["build", "runtime"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", text, re.M)
    assert "useradd --uid 1000" in text
    assert re.search(r"^USER 1000:1000$", text, re.M)
    healthcheck = re.search(r"^HEALTHCHECK .*?\n(.*?)$", text, re.M | re.S)
    assert healthcheck
    assert "urllib.request" in text.split("HEALTHCHECK", 1)[1].split("\n\n")[0]
    assert not re.search(r"\b(curl|wget)\b", text.split("HEALTHCHECK", 1)[1].split("ENTRYPOINT")[0])
    assert "build-essential" not in text.split("AS runtime", 1)[1]
    entrypoint = (DEPLOY / "docker-entrypoint.sh").read_text()
    assert entrypoint.index("chatstudio migrate") < entrypoint.index("exec chatstudio serve --workers")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[1:2] == ["*"] or "*" in ignore


def test_production_env_example_is_valid(tmp_path: Path) -> None:
    compose_only = {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    names = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    fields = {name.upper() for name in Settings.model_fields}
    assert names - compose_only <= fields, names - compose_only - fields
    filled = ENV_EXAMPLE.read_text().replace("SECRET_KEY=change-me", "SECRET_KEY=" + "Kx9-" * 12)
    env = tmp_path / ".env"
    env.write_text(filled)
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.debug is False
    assert settings.docs_enabled is False
    assert settings.local_model_enabled is False
    assert settings.max_upload_size == 10 * 1024 * 1024
    assert settings.workers == 2
