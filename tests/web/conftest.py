"""Browser fixtures: headless Chromium (Debian's package) driven by Playwright, against a real
`chatstudio serve --migrate` process on loopback that talks to the fake upstreams.

Without /usr/bin/chromium or the playwright package the browser tests are skipped, unless
CHATSTUDIO_REQUIRE_SERVICES=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bench.fake_upstream import FakeUpstream
from tests.conftest import unavailable
from tests.helpers_proc import ServerProcess, clean_env, running_server
from tests.web.studio import HOSTILE_REPLY, FixedReplyUpstream

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
# model id -> knobs of the fake upstream (see bench/fake_upstream.py)
ENDPOINTS = {
    "slow": "tokens=200,delay_ms=20",
    "medium": "tokens=80,delay_ms=20",
    "busy": "fail=429",
    "down": "fail=503",
}
EXPECT_TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        unavailable("the playwright package")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"chromium ({CHROMIUM})")
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per module with the fake upstream (token streams, failures) and a hostile fixed reply."""
    work = tmp_path_factory.mktemp("studio")
    with FakeUpstream() as upstream, FixedReplyUpstream(HOSTILE_REPLY) as hostile:
        endpoints = [
            {"name": name, "base_url": f"{upstream}/k/{knobs}/v1", "models": ["gpt-test"]}
            for name, knobs in ENDPOINTS.items()
        ]
        endpoints.append({"name": "hostile", "base_url": f"{hostile}/v1", "models": ["gpt-test"]})
        env = clean_env(
            DEBUG="true",
            DATA_DIR=str(work / "data"),
            DATABASE_URL=f"sqlite+aiosqlite:///{work / 'db.sqlite'}",
            LOCAL_MODEL_ENABLED="false",
            OPENAI_API_KEY="sk-x",
            OPENAI_BASE_URL=f"{upstream}/v1",
            OPENAI_COMPATIBLE_ENDPOINTS=json.dumps(endpoints),
            DEFAULT_MODEL="openai/gpt-test",
            OPENAI_DEFAULT_MODEL="gpt-test",
            PROVIDER_MAX_RETRIES="0",
            RATE_LIMIT_PER_MINUTE="2000",
            RATE_LIMIT_PER_HOUR="20000",
            SHUTDOWN_GRACE_SECONDS="1",
            LOG_LEVEL="warning",
            FORWARDED_ALLOW_IPS="127.0.0.1",
        )
        with running_server("--migrate", cwd=work, env=env) as server:
            server.wait_until_up("/health")
            yield server


_client_numbers = itertools.count(2)


@pytest.fixture
def client_ip() -> str:
    """Each test's own client address, told to the server the way nginx does (X-Forwarded-For from the
    trusted loopback proxy), so the per-IP sign-in limits count each test apart. A header only: all
    traffic stays on 127.0.0.1."""
    number = next(_client_numbers)
    return f"127.0.{number // 250}.{number % 250 + 1}"


@pytest.fixture
def page(browser: Browser, studio_server: ServerProcess, client_ip: str) -> Iterator[Page]:
    """A fresh browser context (no shared storage) on the studio page; fails the test on any page
    error or Content-Security-Policy violation."""
    context = browser.new_context(
        base_url=studio_server.base_url,
        viewport={"width": 1280, "height": 800},
        extra_http_headers={"X-Forwarded-For": client_ip},
    )
    context.add_init_script(
        "window.__csp = [];"
        "document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective));"
    )
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    try:
        yield page
        violations: Any = page.evaluate("window.__csp") if not page.is_closed() else []
        assert violations == [], f"CSP violations: {violations}"
        assert errors == [], f"page errors: {errors}"
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")
