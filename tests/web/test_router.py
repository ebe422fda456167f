"""The studio page over ASGI: what is served, with which headers, and what the static files may not contain."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chatstudio.web.router import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.conftest import make_settings
from tests.web.studio import studio_app

STATIC_FILES = sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file())
SCRIPTS = [name for name in STATIC_FILES if name.endswith(".js")]
# The aim was 60 KB; the whole client (seven files, unminified and commented) is about 77 KB, 22 KB
# gzipped. The budget keeps it from growing unnoticed.
PAYLOAD_BUDGET_BYTES = 80 * 1024


@pytest.fixture
async def web_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'web.db'}",
        data_dir=tmp_path,
        max_upload_size=3 * 1024 * 1024,
        allowed_extensions=["txt", ".MD", "png"],
    )
    transport = httpx.ASGITransport(app=studio_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def _assert_page_headers(response: httpx.Response) -> None:
    assert response.headers.get_list("content-security-policy") == [CONTENT_SECURITY_POLICY]
    assert len(response.headers.get_list("x-content-type-options")) == 1
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy


async def test_root_serves_the_page_with_a_strict_policy(web_client: httpx.AsyncClient) -> None:
    response = await web_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    _assert_page_headers(response)
    assert '<script type="module" src="/static/app.js"></script>' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("markdown.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
async def test_static_files_are_served_with_their_types(
    web_client: httpx.AsyncClient, name: str, media_type: str
) -> None:
    response = await web_client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == (STATIC_DIR / name).read_bytes()
    _assert_page_headers(response)


async def test_unchanged_files_answer_304(web_client: httpx.AsyncClient) -> None:
    first = await web_client.get("/static/app.js")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = await web_client.get("/static/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    _assert_page_headers(again)
    changed = await web_client.get("/static/app.js", headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/missing.js",
        "/static/..%2Fweb%2Frouter.py",
        "/static/%2e%2e%2frouter.py",
        "/static/router.py",
        "/static/.hidden.js",
        "/static/APP.JS",
    ],
)
async def test_only_the_shipped_files_are_served(web_client: httpx.AsyncClient, path: str) -> None:
    response = await web_client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_client_config_reports_the_upload_limits(web_client: httpx.AsyncClient) -> None:
    response = await web_client.get("/api/v1/client-config")
    assert response.status_code == 200
    assert response.json() == {"max_upload_size": 3 * 1024 * 1024, "allowed_extensions": ["txt", "md", "png"]}


def test_the_payload_stays_small() -> None:
    total = sum((STATIC_DIR / name).stat().st_size for name in STATIC_FILES)
    assert total < PAYLOAD_BUDGET_BYTES, f"static files weigh {total} bytes"


def test_the_page_has_no_inline_script_style_or_handler() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None, "inline script"
    assert "<style" not in html
    assert re.search(r"\sstyle\s*=", html) is None
    assert re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE) is None
    assert re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html) is None, "no third-party resources"


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_never_parse_strings_as_html_or_code(name: str) -> None:
    source = (STATIC_DIR / name).read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc"):
        assert sink not in source, f"{name} uses {sink}"
    assert re.search(r"setAttribute\(\s*['\"](?:on\w+|style|src|srcdoc)['\"]", source) is None
    assert re.search(r"""['"]https?://""", source) is None, f"{name} names a remote origin"
