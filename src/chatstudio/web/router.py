"""Serves the studio page (`/`), its static files (`/static/...`) and the limits it shows (`/api/v1/client-config`).

The files ship inside the package and are read from disk, with the bytes cached until the file
changes. Every page response carries a strict Content-Security-Policy: no inline script or style,
no third-party origins, so model output that slips into the DOM as markup could still run nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from chatstudio.config import Settings
from chatstudio.errors import NotFound

router = APIRouter()

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# One flat folder: a name is a plain file name with a known suffix, so no path ever leaves it.
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\.(?:html|js|css|svg)$")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    mtime_ns: int


_cache: dict[str, Asset] = {}


def load_asset(name: str) -> Asset:
    """The file's bytes, cached until its modification time changes (so edits show up in development)."""
    if not _ASSET_NAME.match(name):
        raise NotFound("No such file.")
    path = STATIC_DIR / name
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        raise NotFound("No such file.") from None
    cached = _cache.get(name)
    if cached is not None and cached.mtime_ns == mtime_ns:
        return cached
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    asset = Asset(body, MEDIA_TYPES[path.suffix], etag, mtime_ns)
    _cache[name] = asset
    return asset


def _etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match", "")
    return any(candidate.strip().removeprefix("W/") in (etag, "*") for candidate in header.split(","))


def asset_response(request: Request, name: str) -> Response:
    asset = load_asset(name)
    # no-cache: always revalidated (a 304 is cheap), so a new release is picked up on the next load.
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if _etag_matches(request, asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def studio_page(request: Request) -> Response:
    return asset_response(request, "index.html")


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def static_file(request: Request, name: str) -> Response:
    return asset_response(request, name)


@router.get("/api/v1/client-config", tags=["client"])
async def client_config(request: Request) -> dict[str, Any]:
    """What a client shows before it uploads: the largest file accepted and the allowed extensions."""
    settings: Settings = request.app.state.settings
    return {"max_upload_size": settings.max_upload_size, "allowed_extensions": list(settings.allowed_extensions)}
