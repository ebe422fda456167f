"""`/ws/chat` against a real uvicorn process: auth, origin check, turns, concurrency, cancel, bad frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin, Subprotocol

from bench.fake_upstream import expected_text
from tests.e2e.conftest import (
    ALLOWED_ORIGIN,
    FAST_TOKENS,
    MEDIUM_MODEL,
    MEDIUM_TOKENS,
    SLOW_MODEL,
    SLOW_TOKENS,
    Account,
    assistant_messages,
    new_conversation,
    wait_until_settled,
)
from tests.helpers_proc import ServerProcess

pytestmark = pytest.mark.e2e

RECEIVE_DEADLINE_SECONDS = 30.0  # a guard against a hung test, not a speed assertion
MAX_FRAME_BYTES = 256 * 1024
FRAMES_PER_WINDOW = 30


def ws_url(server: ServerProcess) -> str:
    return server.base_url.replace("http://", "ws://", 1) + "/ws/chat"


@asynccontextmanager
async def open_socket(
    server: ServerProcess, *, subprotocols: list[str] | None = None, origin: str | None = None
) -> AsyncIterator[ClientConnection]:
    async with connect(
        ws_url(server),
        subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
        origin=Origin(origin) if origin else None,
        proxy=None,
        open_timeout=10,
        close_timeout=5,
    ) as ws:
        yield ws


async def receive(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(RECEIVE_DEADLINE_SECONDS):
        raw = await ws.recv()
    assert isinstance(raw, str), raw
    frame = json.loads(raw)
    assert isinstance(frame, dict), frame
    return frame


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


@asynccontextmanager
async def signed_in_socket(server: ServerProcess, account: Account) -> AsyncIterator[ClientConnection]:
    async with open_socket(server) as ws:
        await send(ws, {"type": "auth", "token": account.access_token})
        ready = await receive(ws)
        assert ready["type"] == "ready", ready
        yield ws


async def close_code(ws: ClientConnection) -> int:
    """Receive until the server closes; no data frame may come first. Returns the close code."""
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws)
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code


async def read_turn(ws: ClientConnection, request_id: str) -> list[dict[str, Any]]:
    """Frames for `request_id` up to its done/error (this socket carries no other turn)."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = await receive(ws)
        assert frame.get("request_id") == request_id, frame
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            return frames


def turn_text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


def message_frame(request_id: str, conversation_id: str, model: str | None = None) -> dict[str, Any]:
    frame = {"type": "message", "request_id": request_id, "conversation_id": conversation_id, "content": "Hi!"}
    if model is not None:
        frame["model"] = model
    return frame


# authentication and origin


async def test_auth_by_first_frame(server: ServerProcess, account: Account) -> None:
    async with open_socket(server) as ws:
        await send(ws, {"type": "auth", "token": account.access_token})
        ready = await receive(ws)
        assert ready["type"] == "ready"
        assert ready["user_id"]
        await send(ws, {"type": "ping", "request_id": "p1"})
        assert await receive(ws) == {"type": "pong", "request_id": "p1"}


async def test_auth_by_subprotocol(server: ServerProcess, account: Account) -> None:
    async with open_socket(server, subprotocols=["bearer", account.access_token]) as ws:
        assert ws.subprotocol == "bearer"  # never echoes the token back
        ready = await receive(ws)
        assert ready["type"] == "ready"


@pytest.mark.parametrize(
    "first_frame",
    [
        pytest.param({"type": "auth", "token": "not-a-token"}, id="bad-token"),
        pytest.param({"type": "auth"}, id="no-token"),
        pytest.param({"type": "ping"}, id="no-auth-frame"),
    ],
)
async def test_unauthenticated_first_frame_closes_4401(server: ServerProcess, first_frame: dict[str, Any]) -> None:
    async with open_socket(server) as ws:
        await send(ws, first_frame)
        assert await close_code(ws) == 4401


async def test_bad_token_in_subprotocol_closes_4401(server: ServerProcess) -> None:
    async with open_socket(server, subprotocols=["bearer", "not-a-token"]) as ws:
        assert await close_code(ws) == 4401


async def test_tampered_token_closes_4401(server: ServerProcess, account: Account) -> None:
    tampered = account.access_token[:-4] + ("AAAA" if not account.access_token.endswith("AAAA") else "BBBB")
    async with open_socket(server) as ws:
        await send(ws, {"type": "auth", "token": tampered})
        assert await close_code(ws) == 4401


async def test_foreign_origin_closes_4403(server: ServerProcess, account: Account) -> None:
    async with open_socket(server, subprotocols=["bearer", account.access_token], origin="https://evil.example") as ws:
        assert await close_code(ws) == 4403


@pytest.mark.parametrize("origin", ["allowed", "same-host"])
async def test_allowed_and_same_host_origins_are_accepted(server: ServerProcess, origin: str, account: Account) -> None:
    value = ALLOWED_ORIGIN if origin == "allowed" else server.base_url
    async with open_socket(server, subprotocols=["bearer", account.access_token], origin=value) as ws:
        assert (await receive(ws))["type"] == "ready"


# turns


async def test_a_turn_streams_start_deltas_done(
    server: ServerProcess, client: httpx.AsyncClient, account: Account
) -> None:
    conversation_id = await new_conversation(client, account)
    async with signed_in_socket(server, account) as ws:
        await send(ws, message_frame("r1", conversation_id))
        frames = await read_turn(ws, "r1")

    start, *deltas, done = frames
    assert start["type"] == "start"
    assert start["conversation_id"] == conversation_id
    assert deltas
    assert all(f["type"] == "delta" for f in deltas)
    assert done["type"] == "done", done
    assert turn_text(frames) == expected_text(FAST_TOKENS)
    assert done["message"]["content"] == expected_text(FAST_TOKENS)
    assert done["message"]["id"] == start["assistant_message_id"]
    assert done["message"]["status"] == "completed"
    stored = await assistant_messages(client, account, conversation_id)
    assert [(m["id"], m["content"]) for m in stored] == [(start["assistant_message_id"], expected_text(FAST_TOKENS))]


async def test_two_turns_run_concurrently_on_one_socket(
    server: ServerProcess, client: httpx.AsyncClient, account: Account
) -> None:
    first_conversation = await new_conversation(client, account)
    second_conversation = await new_conversation(client, account)
    frames: dict[str, list[dict[str, Any]]] = {"long": [], "short": []}
    order: list[tuple[str, str]] = []  # (request_id, type) as received

    async with signed_in_socket(server, account) as ws:
        await send(ws, message_frame("long", first_conversation, MEDIUM_MODEL))
        # Wait until the long turn is under way, then start the short one beside it.
        while not any(f["type"] == "delta" for f in frames["long"]):
            frame = await receive(ws)
            frames[frame["request_id"]].append(frame)
            order.append((frame["request_id"], frame["type"]))
        await send(ws, message_frame("short", second_conversation))
        finished: set[str] = set()
        while finished != {"long", "short"}:
            frame = await receive(ws)
            assert frame["request_id"] in frames, frame
            frames[frame["request_id"]].append(frame)
            order.append((frame["request_id"], frame["type"]))
            if frame["type"] in ("done", "error"):
                finished.add(frame["request_id"])

    for request_id, tokens, conversation_id in (
        ("long", MEDIUM_TOKENS, first_conversation),
        ("short", FAST_TOKENS, second_conversation),
    ):
        turn = frames[request_id]
        assert turn[0]["type"] == "start"
        assert turn[0]["conversation_id"] == conversation_id
        assert turn[-1]["type"] == "done", turn[-1]
        assert turn_text(turn) == expected_text(tokens)  # nothing of the other turn mixed in
        assert turn[-1]["message"]["content"] == expected_text(tokens)
        assert turn[-1]["message"]["id"] == turn[0]["assistant_message_id"]
    # The short turn did not queue behind the long one: it finished while the long one still streamed.
    assert order.index(("short", "done")) < order.index(("long", "done"))
    assert ("long", "delta") in order[order.index(("short", "done")) :]


async def test_cancel_stops_the_turn_and_keeps_exactly_what_was_sent(
    server: ServerProcess, client: httpx.AsyncClient, account: Account
) -> None:
    conversation_id = await new_conversation(client, account)
    async with signed_in_socket(server, account) as ws:
        await send(ws, message_frame("c1", conversation_id, SLOW_MODEL))
        start = await receive(ws)
        assert start["type"] == "start", start
        frames = [await receive(ws), await receive(ws)]
        assert [f["type"] for f in frames] == ["delta", "delta"]
        await send(ws, {"type": "cancel", "request_id": "c1"})
        frames += await read_turn(ws, "c1")
        # The socket stays usable, and the finished turn can no longer be cancelled.
        await send(ws, {"type": "cancel", "request_id": "c1"})
        assert (await receive(ws))["code"] == "not_found"

    *deltas, final = frames
    assert final["type"] == "error", final
    assert final["code"] == "cancelled"
    assert final["message_id"] == start["assistant_message_id"]
    assert all(f["type"] == "delta" for f in deltas)
    assert len(deltas) < SLOW_TOKENS // 2  # stopped promptly, far from the end of the reply
    text = turn_text(deltas)
    stored = await assistant_messages(client, account, conversation_id)
    assert len(stored) == 1
    assert stored[0]["status"] == "cancelled"
    assert stored[0]["content"] == text


async def test_ping_pong(server: ServerProcess, account: Account) -> None:
    async with signed_in_socket(server, account) as ws:
        await send(ws, {"type": "ping"})
        assert await receive(ws) == {"type": "pong", "request_id": None}
        await send(ws, {"type": "ping", "request_id": "abc"})
        assert await receive(ws) == {"type": "pong", "request_id": "abc"}


async def test_bad_frames_get_errors_and_the_socket_stays_open(server: ServerProcess, account: Account) -> None:
    async with signed_in_socket(server, account) as ws:
        await ws.send("{not json")
        assert (await receive(ws))["code"] == "invalid_frame"
        await ws.send(b"\x00\x01binary")
        assert (await receive(ws))["code"] == "invalid_frame"
        await send(ws, {"type": "dance", "request_id": "d1"})
        unknown = await receive(ws)
        assert (unknown["code"], unknown["request_id"]) == ("invalid_frame", "d1")
        await send(ws, {"type": "message", "request_id": "m1", "conversation_id": "nope", "content": "x"})
        invalid = await receive(ws)
        assert (invalid["type"], invalid["code"], invalid["request_id"]) == ("error", "validation_error", "m1")
        await ws.send(json.dumps({"type": "ping", "pad": "x" * MAX_FRAME_BYTES}))
        too_large = await receive(ws)
        assert (too_large["type"], too_large["code"]) == ("error", "frame_too_large")
        await send(ws, {"type": "ping", "request_id": "still-here"})
        assert await receive(ws) == {"type": "pong", "request_id": "still-here"}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[1]", id="array"),
        pytest.param("5", id="number"),
        pytest.param("null", id="null"),
        pytest.param('"ping"', id="string"),
        pytest.param("[" * 5000 + "]" * 5000, id="deep"),
    ],
)
async def test_json_that_is_not_an_object_gets_an_error_frame(
    server: ServerProcess, raw: str, account: Account
) -> None:
    async with signed_in_socket(server, account) as ws:
        await ws.send(raw)
        error = await receive(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_frame")
        await send(ws, {"type": "ping", "request_id": "still-here"})
        assert await receive(ws) == {"type": "pong", "request_id": "still-here"}


async def test_too_many_frames_are_rate_limited(server: ServerProcess, account: Account) -> None:
    async with signed_in_socket(server, account) as ws:
        for index in range(FRAMES_PER_WINDOW):
            await send(ws, {"type": "ping", "request_id": str(index)})
            assert await receive(ws) == {"type": "pong", "request_id": str(index)}
        await send(ws, {"type": "ping", "request_id": "one-too-many"})
        limited = await receive(ws)
        assert (limited["type"], limited["code"]) == ("error", "rate_limited")


async def test_another_users_conversation_is_not_found(
    server: ServerProcess, client: httpx.AsyncClient, account: Account, other_account: Account
) -> None:
    owners_conversation = await new_conversation(client, account)
    async with signed_in_socket(server, other_account) as ws:
        await send(ws, message_frame("x1", owners_conversation))
        error = await receive(ws)
        assert error["type"] == "error"
        assert error["code"] == "conversation_not_found"
        assert error["request_id"] == "x1"
        await send(ws, {"type": "ping", "request_id": "after"})
        assert await receive(ws) == {"type": "pong", "request_id": "after"}
    assert await assistant_messages(client, account, owners_conversation) == []


async def test_closing_the_socket_mid_turn_still_stores_the_whole_reply(
    server: ServerProcess, client: httpx.AsyncClient, account: Account
) -> None:
    conversation_id = await new_conversation(client, account)
    async with signed_in_socket(server, account) as ws:
        await send(ws, message_frame("gone", conversation_id, SLOW_MODEL))
        start = await receive(ws)
        assert start["type"] == "start", start
        assert (await receive(ws))["type"] == "delta"
        assert (await receive(ws))["type"] == "delta"
        await ws.close()

    stored = await wait_until_settled(client, account, conversation_id, start["assistant_message_id"])
    assert stored["status"] == "completed"
    assert stored["content"] == expected_text(SLOW_TOKENS)
    assert len(await assistant_messages(client, account, conversation_id)) == 1
