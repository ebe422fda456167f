"""Scenarios A-D and memory: each target measured next to the direct fake upstream, interleaved.

Every round runs each concurrency against every target in turn (the order rotates per round), so a
slow drift of the machine hits all targets alike; results are merged over the rounds.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from bench import loadgen, procs
from bench.dataset import asyncpg_dsn
from bench.loadgen import Result, http_request

PASSWORD = "bench-Harbor-73-kettle"
SECRET_KEY = "bench-secret-key-" + "x" * 48
TOKENS = 64
STREAM_TAIL = b"data: [DONE]\n\n"
PROMPT = [{"role": "user", "content": "Say something, anything at all."}]
LONGEST_WINDOW = 48.0


@dataclass
class Target:
    name: str
    port: int
    request: Callable[[int, int], bytes]
    expect_tail: bytes = b""
    expect_in_body: bytes = b""
    cpu: Callable[[], float] | None = None  # the server's CPU seconds so far, for CPU per request


class Api:
    """JSON calls for setting up (not measured)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        raw = http_request(
            method,
            path,
            host=f"127.0.0.1:{self.port}",
            body=json.dumps(body).encode() if body is not None else b"",
            headers=headers,
        )
        response = await loadgen.fetch("127.0.0.1", self.port, raw)
        try:
            return response.status, json.loads(response.body) if response.body else None
        except ValueError:
            return response.status, response.body.decode(errors="replace")

    async def sign_in(self, email: str) -> tuple[str, str]:
        """(user id, access token); registers the account the first time."""
        status, body = await self.call("POST", "/api/v1/auth/register", {"email": email, "password": PASSWORD})
        if status not in (201, 409):
            raise RuntimeError(f"register: HTTP {status} {body}")
        status, body = await self.call("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})
        if status != 200:
            raise RuntimeError(f"login: HTTP {status} {body}")
        token = body["access_token"]
        status, me = await self.call("GET", "/api/v1/users/me", token=token)
        if status != 200:
            raise RuntimeError(f"users/me: HTTP {status} {me}")
        return str(me["id"]), str(token)


def server_env(database_url: str, upstream_port: int, data_dir: Path) -> dict[str, str]:
    """Shipped defaults, except what a benchmark must set: the database, the upstream, a key, and the
    general request limit (a load generator is one user sending thousands of requests a second)."""
    return {
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET_KEY,
        "DATA_DIR": str(data_dir),
        "WORKERS": "1",
        "REDIS_URL": "",
        "OPENAI_API_KEY": "sk-bench-upstream",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/k/tokens={TOKENS}/v1",
        "DEFAULT_MODEL": "openai/gpt-bench",
        "RATE_LIMIT_PER_MINUTE": "1000000000",
        "RATE_LIMIT_PER_HOUR": "1000000000",
    }


def completion_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": PROMPT, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def completion_target(name: str, port: int, path: str, model: str, stream: bool, key: str | None) -> Target:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    raw = http_request("POST", path, host=f"127.0.0.1:{port}", body=completion_body(model, stream), headers=headers)
    if stream:
        return Target(name, port, lambda _c, _s: raw, expect_tail=STREAM_TAIL)
    return Target(name, port, lambda _c, _s: raw, expect_in_body=b'"finish_reason"')


def direct(upstream_port: int, stream: bool) -> Target:
    path = f"/k/tokens={TOKENS}/v1/chat/completions"
    return completion_target("direct", upstream_port, path, "gpt-bench", stream, "sk-bench-upstream")


async def load(target: Target, concurrency: int, duration: float) -> Result:
    """`target` loaded by `concurrency` connections for `duration` seconds, its answers checked.

    A server slower than the window (LiteLLM at c=64 on a slow day: ~6 s a request) ends no request
    inside it and would read as 0 requests a second; such a window is measured again, four times longer
    each time, up to LONGEST_WINDOW seconds."""
    while True:
        result = await loadgen.run(
            "127.0.0.1",
            target.port,
            target.request,
            concurrency=concurrency,
            duration=duration,
            expect_tail=target.expect_tail,
            expect_in_body=target.expect_in_body,
        )
        if result.requests or result.errors or duration >= LONGEST_WINDOW:
            return result
        duration = min(LONGEST_WINDOW, duration * 4)


async def interleave(
    targets: list[Target], concurrencies: tuple[int, ...], rounds: int, duration: float
) -> dict[tuple[str, int], Result]:
    merged: dict[tuple[str, int], Result] = {}
    for round_index in range(rounds):
        for concurrency in concurrencies:
            shift = round_index % len(targets)
            for target in targets[shift:] + targets[:shift]:
                cpu_before = target.cpu() if target.cpu else 0.0
                result = await load(target, concurrency, duration)
                if target.cpu:
                    result.server_cpu_seconds = target.cpu() - cpu_before
                merged.setdefault((target.name, concurrency), Result()).merge(result)
    return merged


async def create_api_key(api: Api, token: str) -> str | None:
    status, body = await api.call("POST", "/api/v1/api-keys", {"name": "bench"}, token=token)
    if status != 201 or not isinstance(body, dict) or not str(body.get("key", "")).startswith("cs-"):
        return None
    return str(body["key"])


async def openai_available(api: Api, key: str | None) -> str | None:
    """None when /v1/chat/completions works with an API key; otherwise why not."""
    if key is None:
        return "POST /api/v1/api-keys is not available"
    target = completion_target("probe", api.port, "/v1/chat/completions", "openai/gpt-bench", False, key)
    response = await loadgen.fetch("127.0.0.1", api.port, target.request(0, 0))
    if response.status != 200:
        return f"POST /v1/chat/completions answered HTTP {response.status}"
    return None


async def turn_target(api: Api, token: str, connections: int, cpu: Callable[[], float] | None = None) -> Target:
    """Scenario C's requests: POST /api/v1/conversations/{id}/messages over SSE. Each connection
    spreads its turns over its own 16 new conversations, so histories stay short."""
    per_connection = 16
    conversations = []
    for _ in range(connections * per_connection):
        status, body = await api.call("POST", "/api/v1/conversations", {"title": "bench"}, token=token)
        if status != 201:
            raise RuntimeError(f"create conversation: HTTP {status} {body}")
        conversations.append(body["id"])
    message = json.dumps({"content": "Say something, anything at all.", "stream": True}).encode()
    requests = [
        http_request(
            "POST",
            f"/api/v1/conversations/{cid}/messages",
            host=f"127.0.0.1:{api.port}",
            body=message,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
            },
        )
        for cid in conversations
    ]

    def turn(connection: int, sequence: int) -> bytes:
        return requests[connection * per_connection + sequence % per_connection]

    return Target("C", api.port, turn, expect_in_body=b"event: done\n", cpu=cpu)


async def stored_turns(database_url: str, user_id: str) -> dict[str, int]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT role, status, count(*) AS n FROM message WHERE user_id = $1 GROUP BY role, status",
            uuid.UUID(user_id),
        )
    finally:
        await connection.close()
    return {f"{row['role']}/{row['status']}": int(row["n"]) for row in rows}


async def memory(
    cores: procs.Cores, env: dict[str, str], logs: Path, data_dir: Path, starts: int = 3
) -> dict[str, Any]:
    """Start-up time (spawn to /health, migrations already applied), idle RSS, RSS per idle WebSocket."""
    startup: list[float] = []
    out: dict[str, Any] = {}
    for attempt in range(starts):
        port = procs.free_port()
        server = procs.chatstudio(cores, port, env, logs, cwd=data_dir, name=f"memory-{attempt}")
        try:
            startup.append(await server.wait_http(port))
            if attempt:
                continue
            await asyncio.sleep(1)
            out["rss_idle_kb"] = server.rss_kb()
            api = Api(port)
            _, token = await api.sign_in("memory@bench.example.com")
            for _ in range(5):
                await api.call("GET", "/api/v1/conversations", token=token)
            await asyncio.sleep(1)
            out["rss_after_first_requests_kb"] = server.rss_kb()
            out.update(await _websockets(server, port, token))
        finally:
            server.stop()
    out["startup_seconds"] = sorted(startup)
    return out


async def _websockets(server: procs.Process, port: int, token: str, count: int = 1000) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/ws/chat"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []

        async def open_one() -> None:
            socket = await session.ws_connect(url, autoping=True, heartbeat=None)
            await socket.send_json({"type": "auth", "token": token})
            frame = await socket.receive_json(timeout=30)
            if frame.get("type") != "ready":
                raise RuntimeError(f"websocket auth: {frame}")
            sockets.append(socket)

        async def open_many(n: int) -> None:
            for start in range(0, n, 50):
                await asyncio.gather(*(open_one() for _ in range(min(50, n - start))))

        # Warm the code path first, so the growth measured is per socket, not first-use imports.
        await open_many(20)
        for socket in sockets:
            await socket.close()
        sockets.clear()
        await asyncio.sleep(1)
        before = server.rss_kb()
        began = time.perf_counter()
        await open_many(count)
        opened = time.perf_counter() - began
        await asyncio.sleep(2)
        after = server.rss_kb()
        for socket in sockets:
            with suppress(Exception):
                await socket.close()
    return {
        "websockets": count,
        "websocket_open_seconds": round(opened, 2),
        "rss_before_websockets_kb": before,
        "rss_with_websockets_kb": after,
        "kb_per_websocket": round((after - before) / count, 2),
    }
