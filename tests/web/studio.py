"""Helpers shared by the studio tests: an app that serves the page, and a tiny upstream with a fixed reply."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from fastapi import FastAPI

from chatstudio.config import Settings
from chatstudio.main import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Page

PUBLISHED_SCREENSHOT = Path("/tmp/studio-screenshot.png")


def studio_app(settings: Settings) -> FastAPI:
    return create_app(settings)


# A reply that tries everything: markup that would run script if it reached innerHTML, a javascript:
# link, and the Markdown the renderer must turn into real elements.
HOSTILE_REPLY = (
    "Here is **bold**, *italic* and `inline <b>code</b>`.\n\n"
    '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>\n\n'
    "[click me](javascript:window.__xss=3) and [the docs](https://example.com/docs)\n\n"
    '```html\n<script>window.__xss=4</script>\n<p onclick="window.__xss=5">hi</p>\n```\n\n'
    "- first item\n- second item\n"
)


class FixedReplyUpstream:
    """An OpenAI-compatible upstream (`/v1/chat/completions` streaming, `/v1/models`) that always
    streams `reply`, in small chunks, on a background thread: `with FixedReplyUpstream(t) as url: ...`."""

    def __init__(self, reply: str, chunk: int = 12) -> None:
        self.reply = reply
        self.chunk = chunk
        self.base_url = ""
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> str:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="fixed-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fixed-reply upstream did not start")
        return self.base_url

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-test", "object": "model", "owned_by": "x"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        model = str(payload.get("model", "gpt-test"))
        base = {"id": "chatcmpl-fixed", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

        def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()

        pieces = [self.reply[i : i + self.chunk] for i in range(0, len(self.reply), self.chunk)]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(frame({"role": "assistant", "content": ""}))
        for piece in pieces:
            await response.write(frame({"content": piece}))
        await response.write(frame({}, "stop"))
        usage = {"prompt_tokens": 7, "completion_tokens": len(pieces), "total_tokens": 7 + len(pieces)}
        await response.write(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            self.base_url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def save_screenshot(page: Page, directory: Path, name: str, *, publish: bool = False) -> Path:
    """A screenshot under the test run's tmp dir (path printed); `publish` also copies it to /tmp."""
    path = directory / name
    page.screenshot(path=str(path))
    print(f"studio screenshot: {path}")
    if publish:
        shutil.copyfile(path, PUBLISHED_SCREENSHOT)
        print(f"studio screenshot copy: {PUBLISHED_SCREENSHOT}")
    return path
