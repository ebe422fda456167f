"""The studio page in Firefox: Debian's firefox-esr driven through its built-in WebDriver BiDi by
puppeteer-core (tests/web/firefox/), since no geckodriver is packaged here. One smoke run: sign up,
a reply streamed over the WebSocket, and a hostile reply that renders as text and runs nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.helpers_proc import ServerProcess

HERE = Path(__file__).parent / "firefox"
FIREFOX = "/usr/bin/firefox-esr"


@pytest.mark.e2e
def test_studio_works_in_firefox(studio_server: ServerProcess) -> None:
    node = shutil.which("node")
    if node is None or not Path(FIREFOX).exists() or not (HERE / "node_modules" / "puppeteer-core").is_dir():
        unavailable("firefox-esr, node or tests/web/firefox/node_modules (npm ci --prefix tests/web/firefox)")
    assert node is not None
    result = subprocess.run(
        [node, str(HERE / "smoke.mjs"), studio_server.base_url, FIREFOX],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "studio smoke passed" in result.stdout
