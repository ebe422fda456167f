"""The shipped nginx.conf, for real: nginx on loopback with a throw-away certificate in front of two
`chatstudio serve` instances sharing one PostgreSQL database and one Redis (with a password).

HTTP/2 over TLS, a WebSocket chat through the proxy, an SSE stream whose first delta arrives while the
reply is still being written (nothing buffered), a 413 from the proxy, load on both instances, one rate
limit for both, verify.sh over https, and no secret in any backend log line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench.fake_upstream import FakeUpstream, expected_text
from tests.conftest import (
    DEFAULT_POSTGRES_URL,
    STRONG_PASSWORD,
    _create_scratch_database,
    _drop_scratch_database,
)
from tests.deploy.support import DEPLOY, make_certificate, nginx_command, render_nginx, require_tool
from tests.e2e.conftest import PROVIDER_KEY, SLOW_MODEL, SLOW_TOKENS, SSEReader, server_env
from tests.helpers_proc import ServerProcess, free_port, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

RATE_LIMIT = 40
REDIS_PASSWORD = "redis-Pa55word-for-the-e2e-0123"
METRICS_TOKEN = "nginx-e2e-metrics-token-0123456789"
DEADLINE_SECONDS = 30.0  # guards against a hung test, never a speed assertion
POLL_SECONDS = 0.05


@contextmanager
def private_redis(work: Path) -> Iterator[str]:
    redis_server = require_tool("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            assert process.poll() is None, f"exited with {process.returncode}"
            assert time.monotonic() < end, f"port {port} never opened"
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=POLL_SECONDS)


@contextmanager
def postgres_database() -> Iterator[str]:
    admin = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    url = _create_scratch_database(admin, "postgres")
    try:
        yield url
    finally:
        _drop_scratch_database(admin, url)


@contextmanager
def running_nginx(conf: Path, https_port: int) -> Iterator[None]:
    nginx = require_tool("nginx")
    process = subprocess.Popen(
        nginx_command(nginx, conf, "-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_port(https_port, process)
        yield
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Stack:
    base_url: str
    http_url: str
    cert: Path
    backends: list[ServerProcess]
    nginx_access_log: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, *, http2: bool = True) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, http2=http2, verify=self.ssl_context(), timeout=DEADLINE_SECONDS, trust_env=False
        )

    def backend_log(self) -> str:
        return "".join(
            (Path(b.log_path.parent) / f"backend-{i}.jsonl").read_text() for i, b in enumerate(self.backends)
        )

    def served_by(self, request_id: str) -> list[int]:
        """Which backends logged an access line for this request id."""
        found = []
        for index, backend in enumerate(self.backends):
            for line in (backend.log_path.parent / f"backend-{index}.jsonl").read_text().splitlines():
                entry = json.loads(line)
                if entry.get("logger") == "chatstudio.access" and entry.get("request_id") == request_id:
                    found.append(index)
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tool("nginx")
    work = tmp_path_factory.mktemp("nginx-e2e")
    cert, key = make_certificate(work)
    with ExitStack() as stack:
        upstream = stack.enter_context(FakeUpstream())
        database = stack.enter_context(postgres_database())
        redis_url = stack.enter_context(private_redis(work))
        backends = []
        for index in range(2):
            backend_dir = work / f"backend-{index}"
            backend_dir.mkdir()
            env = server_env(
                upstream,
                backend_dir,
                DATABASE_URL=database,
                REDIS_URL=redis_url,
                REDIS_PASSWORD=REDIS_PASSWORD,
                RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT),
                LOG_FILE=str(work / f"backend-{index}.jsonl"),
                METRICS_TOKEN=METRICS_TOKEN,
            )
            # Both migrate at start-up, at once: the migration lock makes them take turns.
            backends.append(stack.enter_context(running_server("--migrate", cwd=work, env=env)))
        for backend in backends:
            backend.wait_until_up("/health/ready")
        http_port, https_port = free_port(), free_port()
        conf = render_nginx(
            work,
            http_port=http_port,
            https_port=https_port,
            backends=(backends[0].base_url.removeprefix("http://"), backends[1].base_url.removeprefix("http://")),
            cert=cert,
            key=key,
        )
        stack.enter_context(running_nginx(conf, https_port))
        yield Stack(
            f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", cert, backends, work / "access.log"
        )


@dataclass
class User:
    email: str
    token: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def sign_up(client: httpx.AsyncClient) -> User:
    email = f"nginx-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": STRONG_PASSWORD}
    assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
    tokens = (await client.post("/api/v1/auth/login", json=body)).json()
    return User(email, tokens["access_token"], tokens["refresh_token"])


@pytest.fixture(scope="module")
async def users(stack: Stack) -> list[User]:
    async with stack.client() as client:
        return [await sign_up(client) for _ in range(3)]


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client() as http:
        yield http


async def new_conversation(client: httpx.AsyncClient, user: User) -> str:
    response = await client.post("/api/v1/conversations", json={}, headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_http2_over_tls_with_security_headers(client: httpx.AsyncClient, stack: Stack) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert len(response.headers.get_list("x-content-type-options")) == 1
    assert (await client.get("/metrics")).status_code == 404
    async with httpx.AsyncClient(trust_env=False) as plain:
        redirect = await plain.get(f"{stack.http_url}/api/v1/conversations?x=1")
    assert redirect.status_code == 301
    assert redirect.headers["location"].startswith("https://")
    assert redirect.headers["location"].endswith("/api/v1/conversations?x=1")


async def test_websocket_chat_through_the_proxy(stack: Stack, users: list[User], client: httpx.AsyncClient) -> None:
    user = users[0]
    conversation = await new_conversation(client, user)
    url = stack.base_url.replace("https://", "wss://") + "/ws/chat"
    async with connect(
        url,
        ssl=stack.ssl_context(),
        subprotocols=[Subprotocol("bearer"), Subprotocol(user.token)],
        proxy=None,
        open_timeout=DEADLINE_SECONDS,
    ) as ws:
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(DEADLINE_SECONDS):
            frames.append(json.loads(await ws.recv()))
            await ws.send(
                json.dumps({"type": "message", "request_id": "r1", "conversation_id": conversation, "content": "hi"})
            )
            while frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(await ws.recv()))
    kinds = [frame["type"] for frame in frames]
    assert kinds[0] == "ready"
    assert kinds[1] == "start"
    assert kinds[-1] == "done", frames[-1]
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == expected_text(16)


async def test_sse_first_delta_arrives_while_the_reply_is_being_written(
    stack: Stack, users: list[User], client: httpx.AsyncClient
) -> None:
    user = users[1]
    conversation = await new_conversation(client, user)
    async with client.stream(
        "POST",
        f"/api/v1/conversations/{conversation}/messages",
        json={"content": "long story please", "model": SLOW_MODEL, "stream": True},
        headers={**user.headers, "Accept-Encoding": "gzip"},
    ) as response:
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"
        assert "content-encoding" not in response.headers
        reader = SSEReader(response)
        start = await reader.expect("start")
        first = await reader.expect("delta")
        assert first["text"] == "tok0"
        # The reply has SLOW_TOKENS tokens at 20 ms each; were anything buffered, the first delta would
        # only have come with the end. The stored reply must still be streaming now.
        messages = await client.get(f"/api/v1/conversations/{conversation}/messages", headers=user.headers)
        reply = next(m for m in messages.json()["items"] if m["id"] == start["assistant_message_id"])
        assert reply["status"] == "streaming"
        rest = await reader.rest()
    assert rest[-1].event == "done"
    assert 1 + sum(1 for e in rest if e.event == "delta") == SLOW_TOKENS


async def test_oversized_upload_is_refused_by_the_proxy(stack: Stack, users: list[User]) -> None:
    request_id = f"too-big-{uuid.uuid4().hex[:8]}"
    body = b"x" * (12 * 1024 * 1024)
    async with stack.client(http2=False) as client:
        try:
            response = await client.post(
                "/api/v1/files",
                content=body,
                headers={**users[0].headers, "Content-Type": "application/octet-stream", "X-Request-ID": request_id},
            )
            status = response.status_code
        except httpx.WriteError:  # nginx may close the connection while the body is still being sent
            status = 413
        assert status == 413
        assert (await client.get("/health")).status_code == 200
    assert await _proxy_logged(stack, request_id) == 413
    assert stack.served_by(request_id) == []  # no backend ever saw it


async def _proxy_logged(stack: Stack, request_id: str) -> int | None:
    """The status nginx logged for the request, waiting for the line to be written.

    nginx writes a request's access-log line when it frees the request; after a 413 with the body still
    coming it first drains the connection (lingering close), so the line can land after the client has
    already given up on that connection.
    """
    end = time.monotonic() + DEADLINE_SECONDS
    while True:
        for line in stack.nginx_access_log.read_text().splitlines():
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return int(entry["status"])
        if time.monotonic() > end:
            return None
        await asyncio.sleep(POLL_SECONDS)


async def _backends_that_logged(stack: Stack, request_ids: list[str]) -> list[list[int]]:
    """stack.served_by for each request, once every one has been logged (or the guard ran out): a
    backend writes a request's access line after sending the response, so the last line can still
    be on its way when the client has the answer."""
    end = time.monotonic() + DEADLINE_SECONDS
    while True:
        served = [stack.served_by(request_id) for request_id in request_ids]
        if all(served) or time.monotonic() > end:
            return served
        await asyncio.sleep(POLL_SECONDS)


async def _burst(client: httpx.AsyncClient, user: User) -> tuple[list[str], list[int], bool]:
    """RATE_LIMIT + 6 requests; also says whether a limit window rolled over during them."""
    ids = [f"spread-{uuid.uuid4().hex[:8]}-{n}" for n in range(RATE_LIMIT + 6)]
    statuses, resets = [], []
    for request_id in ids:
        response = await client.get("/api/v1/conversations", headers={**user.headers, "X-Request-ID": request_id})
        assert response.headers["x-request-id"] == request_id
        statuses.append(response.status_code)
        resets.append(int(response.headers["ratelimit-reset"]))
    rolled = any(later > earlier for earlier, later in itertools.pairwise(resets))
    return ids, statuses, rolled


async def test_load_is_spread_and_the_rate_limit_is_shared(
    stack: Stack, users: list[User], client: httpx.AsyncClient
) -> None:
    ids, statuses, rolled = await _burst(client, users[2])
    if rolled:  # the windows are aligned to the clock: a burst across :00 is measured again, once
        ids, statuses, rolled = await _burst(client, await sign_up(client))
        assert not rolled
    # One limit for both instances: exactly RATE_LIMIT answers, then refusals from whichever instance.
    assert statuses.count(200) == RATE_LIMIT
    assert statuses[RATE_LIMIT:] == [429] * 6
    served = await _backends_that_logged(stack, ids[:RATE_LIMIT])
    assert all(len(s) == 1 for s in served)
    counts = [sum(1 for s in served if s == [index]) for index in range(2)]
    assert min(counts) >= RATE_LIMIT // 4, counts  # least_conn spreads sequential requests over both


async def test_verify_script_passes_over_https(stack: Stack) -> None:
    async with stack.client() as client:
        smoke = await sign_up(client)
    env = {
        **os.environ,
        "CA_FILE": str(stack.cert),
        "SMOKE_EMAIL": smoke.email,
        "SMOKE_PASSWORD": STRONG_PASSWORD,
        "SMOKE_MODEL": "openai/gpt-test",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [str(DEPLOY / "verify.sh"), stack.base_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    HSTS" in result.stdout
    assert "ok    /metrics is not public (404)" in result.stdout
    assert "chat round trip" in result.stdout


async def test_no_secret_in_any_backend_log_line(stack: Stack, users: list[User]) -> None:
    """Runs last in the module: every request above went through the backends' JSON logs."""
    text = stack.backend_log()
    lines = text.splitlines()
    assert len(lines) > 50
    for line in lines:
        json.loads(line)
    for secret in (
        PROVIDER_KEY,
        STRONG_PASSWORD,
        REDIS_PASSWORD,
        METRICS_TOKEN,
        *(u.token for u in users),
        *(u.refresh for u in users),
    ):
        assert secret not in text
