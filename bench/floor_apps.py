"""The two bare ASGI apps of `bench.floor`, served by plain uvicorn: what a /v1 completion costs
with nothing of the studio around it.

- `canned`: answers every request with the direct upstream's reply, read from CANNED_FILE (the cost of
  uvicorn itself: one request in, one response of the same size out);
- `relay`: forwards the request body to UPSTREAM_BASE + /chat/completions over the studio's own
  upstream pool and streams the reply back as it arrives (the cost of a relay on our stack, before
  authentication, limits, routing, accounting and logs).
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.types import Receive, Scope, Send

from chatstudio.llm.upstream import UpstreamPool

_SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_pool: UpstreamPool | None = None
# Read at import (uvicorn imports the app before serving); only the `canned` server sets the file.
_canned = Path(os.environ["CANNED_FILE"]).read_bytes() if os.environ.get("CANNED_FILE") else b""


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _ready(scope: Scope, send: Send) -> bool:
    """A GET is the readiness probe: 200, nothing relayed."""
    if scope["method"] != "GET":
        return False
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
    return True


async def canned(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http" or await _ready(scope, send):
        return
    await _body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": list(_SSE)})
    await send({"type": "http.response.body", "body": _canned})


async def relay(scope: Scope, receive: Receive, send: Send) -> None:
    global _pool
    if scope["type"] != "http" or await _ready(scope, send):
        return
    if _pool is None:
        _pool = UpstreamPool(
            os.environ["UPSTREAM_BASE"],
            headers={"Authorization": f"Bearer {os.environ['UPSTREAM_KEY']}", "Content-Type": "application/json"},
            connect_timeout=5,
            read_timeout=30,
        )
    response = await _pool.request("POST", "/chat/completions", body=await _body(receive))
    await send({"type": "http.response.start", "status": response.status, "headers": list(_SSE)})
    async with response:
        async for data in response:
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
