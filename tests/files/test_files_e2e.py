"""Uploads and file turns through a real `chatstudio serve` on loopback: the upload limit over a real
socket (413 before the body has been sent) and `file_ids` over the WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import Account, e2e_server, http_client, new_conversation, sign_up
from tests.helpers_proc import ServerProcess

pytestmark = pytest.mark.e2e

LIMIT = 64 * 1024
DEADLINE_SECONDS = 30.0  # guards a hung test, never a speed assertion


@pytest.fixture(scope="module")
def files_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from bench.fake_upstream import FakeUpstream

    with (
        FakeUpstream() as upstream,
        e2e_server(upstream, tmp_path_factory.mktemp("files-e2e"), MAX_UPLOAD_SIZE=str(LIMIT)) as server,
    ):
        yield server


@pytest.fixture(scope="module")
async def account(files_server: ServerProcess) -> Account:
    async with http_client(files_server) as http:
        return await sign_up(http)


async def test_413_comes_back_while_the_client_is_still_sending(files_server: ServerProcess, account: Account) -> None:
    host, port = files_server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            (
                "POST /api/v1/files HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Authorization: Bearer {account.access_token}\r\n"
                "Content-Type: multipart/form-data; boundary=zz\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        head = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        for piece in [head] + [b"x" * 8192] * (LIMIT // 8192 + 2):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        # The body is not finished (no closing boundary, no last chunk): only an early answer can arrive.
        async with asyncio.timeout(DEADLINE_SECONDS):
            head_lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in head_lines[1:] if ": " in line)
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
        assert head_lines[0].startswith("HTTP/1.1 413"), head_lines[0]
        assert body["error"]["code"] == "file_too_large"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_limit_exactly_is_accepted_and_file_ids_work_over_the_websocket(
    files_server: ServerProcess, account: Account, tmp_path: Path
) -> None:
    async with http_client(files_server) as http:
        full = await http.post(
            "/api/v1/files", headers=account.headers, files={"file": ("full.txt", b"a " * (LIMIT // 2), "text/plain")}
        )
        assert full.status_code == 201, full.text
        notes = await http.post(
            "/api/v1/files", headers=account.headers, files={"file": ("n.txt", b"one two three", "text/plain")}
        )
        conversation = await new_conversation(http, account)
    url = files_server.base_url.replace("http://", "ws://", 1) + "/ws/chat"
    async with connect(url, proxy=None, open_timeout=10, close_timeout=5) as ws:
        await ws.send(json.dumps({"type": "auth", "token": account.access_token}))
        frames = []
        async with asyncio.timeout(DEADLINE_SECONDS):
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(
                json.dumps(
                    {
                        "type": "message",
                        "request_id": "r1",
                        "conversation_id": conversation,
                        "content": "count them",
                        "file_ids": [notes.json()["id"]],
                    }
                )
            )
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(await ws.recv()))
    assert frames[-1]["type"] == "done", frames[-1]
    shown = '<file name="n.txt">\none two three\n</file>\n\ncount them'
    assert frames[-1]["usage"]["input_tokens"] == len(shown.split())
