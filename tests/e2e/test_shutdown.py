"""SIGTERM with a reply streaming: new turns are refused, the running one is stored as `interrupted`
with exactly the text the client received, its stream ends with an `interrupted` error, the process exits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.fake_upstream import expected_text
from tests.e2e.conftest import (
    LONG_MODEL,
    LONG_TOKENS,
    e2e_server,
    http_client,
    new_conversation,
    sign_up,
    split_reply,
    stream_turn,
)
from tests.helpers_proc import GRACEFUL_EXIT_CODES, STOP_DEADLINE_SECONDS

pytestmark = pytest.mark.e2e


def stored_assistant_messages(db: Path) -> list[tuple[str, str, str | None]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT status, content, error_code FROM message WHERE role = 'assistant'").fetchall()
    return [(str(status), str(content), error_code) for status, content, error_code in rows]


async def test_sigterm_interrupts_a_running_reply_and_stores_what_was_sent(fake_upstream: str, tmp_path: Path) -> None:
    with e2e_server(fake_upstream, tmp_path, SHUTDOWN_GRACE_SECONDS="1") as server:
        async with http_client(server) as client:
            account = await sign_up(client)
            conversation_id = await new_conversation(client, account)
            async with stream_turn(client, account, conversation_id, model=LONG_MODEL) as reader:
                assistant_id = (await reader.expect("start"))["assistant_message_id"]
                received = [(await reader.expect("delta"))["text"] for _ in range(3)]

                server.process.send_signal(signal.SIGTERM)
                # uvicorn logs this once it has begun shutting down (listening sockets closed next).
                await asyncio.to_thread(server.wait_for_log, r"Shutting down")
                async with http_client(server) as late:
                    try:
                        refused = await late.post(
                            f"/api/v1/conversations/{conversation_id}/messages",
                            json={"content": "One more?"},
                            headers=account.headers,
                        )
                    except httpx.ConnectError:
                        pass  # the listening socket is already closed: as good as a 503
                    else:
                        assert refused.status_code == 503, refused.text
                        assert refused.json()["error"]["code"] == "shutting_down"

                deltas, final = split_reply(await reader.rest())

        code = await asyncio.to_thread(server.process.wait, STOP_DEADLINE_SECONDS)
        log = server.log()

    received += deltas
    assert final.event == "error", final
    assert final.data["code"] == "interrupted"
    assert final.data["message_id"] == assistant_id
    text = "".join(received)
    assert len(received) < LONG_TOKENS  # cut short by the shutdown, not run to the end
    assert expected_text(LONG_TOKENS).startswith(text)
    assert code in GRACEFUL_EXIT_CODES, log
    assert "Traceback" not in log, log

    # Read the file the stopped server left behind: one reply, interrupted, exactly what the client saw.
    assert stored_assistant_messages(tmp_path / "e2e.db") == [("interrupted", text, "interrupted")]


async def test_sigterm_with_a_websocket_turn_stores_it_as_interrupted(fake_upstream: str, tmp_path: Path) -> None:
    """uvicorn closes every socket as soon as it starts shutting down, so the server hands SIGTERM
    to uvicorn only after the turns have drained: the client gets its `interrupted` frame first."""
    with e2e_server(fake_upstream, tmp_path, SHUTDOWN_GRACE_SECONDS="1") as server:
        async with http_client(server) as client:
            account = await sign_up(client)
            conversation_id = await new_conversation(client, account)
        url = server.base_url.replace("http://", "ws://", 1) + "/ws/chat"
        received: list[str] = []
        final: dict[str, Any] | None = None
        close_code: int | None = None
        async with connect(url, proxy=None, open_timeout=10, close_timeout=5) as ws:
            await ws.send(json.dumps({"type": "auth", "token": account.access_token}))
            assert json.loads(await ws.recv())["type"] == "ready"
            message = {"type": "message", "request_id": "r", "conversation_id": conversation_id, "content": "Hi"}
            await ws.send(json.dumps({**message, "model": LONG_MODEL}))
            assert json.loads(await ws.recv())["type"] == "start"
            try:
                while final is None:
                    async with asyncio.timeout(30):
                        frame = json.loads(await ws.recv())
                    assert frame["request_id"] == "r", frame
                    if frame["type"] == "delta":
                        received.append(frame["text"])
                        if len(received) == 3:
                            server.process.send_signal(signal.SIGTERM)
                    else:
                        final = frame
            except ConnectionClosed as closed:
                close_code = closed.rcvd.code if closed.rcvd is not None else None
        code = await asyncio.to_thread(server.process.wait, STOP_DEADLINE_SECONDS)
        log = server.log()

    assert code in GRACEFUL_EXIT_CODES, log
    assert "Traceback" not in log, log
    text = "".join(received)
    [(status, content, error_code)] = stored_assistant_messages(tmp_path / "e2e.db")
    assert (status, error_code) == ("interrupted", "interrupted")
    assert len(received) >= 3
    assert content != expected_text(LONG_TOKENS)
    assert final is not None, f"socket closed ({close_code}) before the final frame"
    assert (final["type"], final["code"]) == ("error", "interrupted"), final
    assert content == text
