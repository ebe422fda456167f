"""The lean upstream HTTP client against real local servers: an aiohttp app for well-behaved HTTP, and raw
asyncio servers for the byte-level misbehaviour (cut bodies, stalls, idle closes, malformed responses)."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import shutil
import ssl
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from chatstudio.llm.upstream import UpstreamConnectionError, UpstreamPayloadError, UpstreamPool
from chatstudio.llm.upstream_connection import HIGH_WATER, UpstreamResponse

SECRET = "sk-very-secret-key-0123456789"
BIG = random.Random(7).randbytes(5 * 1024 * 1024 + 123)


class App:
    """An aiohttp.web upstream that records the client port of each request (one port per connection)."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.in_flight = self.max_in_flight = 0
        self.release = asyncio.Event()
        self.base = ""

    @property
    def connections(self) -> int:
        return len(set(self.ports))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.route(request, request.match_info["tail"])
        finally:
            self.in_flight -= 1

    async def route(self, request: web.Request, tail: str) -> web.StreamResponse:
        if tail == "echo":
            body = await request.read()
            return web.json_response(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": dict(request.query),
                    "headers": [[k, v] for k, v in request.headers.items()],
                    "body": body.decode(),
                }
            )
        if tail == "slow":
            await asyncio.sleep(0.1)
            return web.Response(body=b"slow")
        if tail in ("big", "bigchunked"):
            response = web.StreamResponse()
            if tail == "big":
                response.content_length = len(BIG)
            await response.prepare(request)
            for start in range(0, len(BIG), 100_000):
                await response.write(BIG[start : start + 100_000])
            await response.write_eof()
            return response
        if tail == "stream":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first")
            await self.release.wait()
            await response.write(b"last")
            await response.write_eof()
            return response
        return web.Response(status=404)


@asynccontextmanager
async def serve(state: App, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    application = web.Application()
    application.router.add_route("*", "/p/v1/{tail:.*}", state.handle)
    runner = web.AppRunner(application, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    try:
        yield runner.addresses[0][1]
    finally:
        state.release.set()
        await runner.cleanup()


@pytest_asyncio.fixture
async def app() -> AsyncIterator[App]:
    state = App()
    async with serve(state) as port:
        state.base = f"http://127.0.0.1:{port}/p/v1"
        yield state


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost"
    command += " -addext subjectAltName=DNS:localhost"
    subprocess.run([*command.split(), "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """asyncio.start_server with a per-connection handler(reader, writer, connection number)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler must end normally: asyncio's done-callback would report it
        finally:
            writer.close()
            self.tasks.discard(task)

    async def __aexit__(self, *exc: object) -> None:
        if self.tasks:  # handlers end once the client's close reaches them
            await asyncio.wait(list(self.tasks), timeout=1.0)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.server.close()
        await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


async def collect(response: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in response:
        into.append(chunk)


def pool_for(base: str, **kwargs: Any) -> UpstreamPool:
    options: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 2.0}
    options.update(kwargs)
    return UpstreamPool(base, **options)


async def test_json_post_round_trip_with_headers_params_and_host(app: App) -> None:
    pool = pool_for(app.base, headers={"Authorization": f"Bearer {SECRET}", "X-Both": "pool"})
    payload = json.dumps({"hello": "wörld"}).encode()
    async with await pool.request(
        "POST", "/echo", body=payload, headers={"x-both": "call"}, params={"a": "1 2", "b": "&"}
    ) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/json")
        seen = json.loads(await response.read())
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["method"] == "POST"
    assert seen["path"] == "/p/v1/echo"
    assert seen["query"] == {"a": "1 2", "b": "&"}
    assert json.loads(seen["body"]) == {"hello": "wörld"}
    assert headers["host"] == app.base.split("/")[2]
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["content-length"] == str(len(payload))
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"] == "chatstudio"
    assert [k.lower() for k, _ in seen["headers"]].count("x-both") == 1
    assert headers["x-both"] == "call"
    # An empty POST still says Content-Length: 0; a GET does not.
    seen = json.loads(await (await pool.request("POST", "/echo")).read())
    assert ["Content-Length", "0"] in seen["headers"]
    seen = json.loads(await (await pool.request("GET", "/echo")).read())
    assert "content-length" not in [k.lower() for k, _ in seen["headers"]]
    await pool.aclose()


async def test_https_verifies_the_certificate_and_sends_sni(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(*certificate)
    state = App()
    async with serve(state, server_side) as port:
        with pytest.raises(UpstreamConnectionError):  # the system trust store does not know our certificate
            await pool_for(f"https://localhost:{port}/p/v1").request("GET", "/echo")
        monkeypatch.setenv("SSL_CERT_FILE", certificate[0])  # read by ssl.create_default_context()
        async with pool_for(f"https://localhost:{port}/p/v1") as pool:
            for body in ("one", "two"):
                seen = json.loads(await (await pool.request("POST", "/echo", body=body.encode())).read())
                assert seen["body"] == body
        assert dict(seen["headers"])["Host"] == f"localhost:{port}"
    assert state.connections == 1


def test_host_header_omits_the_default_port() -> None:
    head = pool_for("https://api.example.com/v1")._head("GET", "/models", 0, None, None)
    assert head.startswith(b"GET /v1/models HTTP/1.1\r\nHost: api.example.com\r\n")
    head = pool_for("https://api.example.com:8443/")._head("GET", "/models", 0, None, None)
    assert b"\r\nHost: api.example.com:8443\r\n" in head


async def test_sequential_requests_share_one_connection(app: App) -> None:
    async with pool_for(app.base) as pool:
        for i in range(20):
            response = await pool.request("POST", "/echo", body=str(i).encode())
            assert json.loads(await response.read())["body"] == str(i)
    assert app.connections == 1


async def test_concurrent_requests_each_get_their_own_answer(app: App) -> None:
    async with pool_for(app.base) as pool:

        async def one(i: int) -> str:
            async with await pool.request("POST", "/echo", body=f"body-{i}".encode()) as response:
                return str(json.loads(await response.read())["body"])

        assert await asyncio.gather(*(one(i) for i in range(16))) == [f"body-{i}" for i in range(16)]
        # Once they are back in the pool, another round reuses them.
        await asyncio.gather(*(one(i) for i in range(16)))
    assert app.connections <= 16


async def test_chunked_stream_arrives_incrementally(app: App) -> None:
    async with pool_for(app.base) as pool, await pool.request("GET", "/stream") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        chunks = response.iter_any()
        assert await chunks.__anext__() == b"first"  # while the server still holds back the last chunk
        app.release.set()
        assert [chunk async for chunk in chunks] == [b"last"]


@pytest.mark.parametrize("path", ["/echo", "/bigchunked"])
async def test_a_finished_response_is_freed_without_the_cycle_collector(app: App, path: str) -> None:
    """Every relayed completion makes a response; one left in a reference cycle would wait for the
    cycle collector, whose passes cost the server CPU on every request."""
    async with pool_for(app.base) as pool:
        gc.collect()
        gc.disable()
        try:
            response = await pool.request("POST" if path == "/echo" else "GET", path)
            assert [chunk async for chunk in response]
            del response
            assert not [o for o in gc.get_objects() if type(o) is UpstreamResponse]
        finally:
            gc.enable()


@pytest.mark.parametrize("path", ["/big", "/bigchunked"])
async def test_large_body_is_read_whole_through_flow_control(app: App, path: str) -> None:
    async with pool_for(app.base) as pool:
        response = await pool.request("GET", path)
        await asyncio.sleep(0.1)  # let the socket fill the buffer while nobody reads
        assert response._buffered <= HIGH_WATER + 512 * 1024
        assert await response.read() == BIG
        # The connection was resumed and pooled: the next request reuses it.
        assert json.loads(await (await pool.request("POST", "/echo", body=b"x")).read())["body"] == "x"
    assert app.connections == 1


async def test_content_length_repeated_headers_and_interim_responses() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()

    async with RawServer(handler) as base, pool_for(base) as pool:
        for _ in range(2):
            response = await pool.request("GET", "/")
            assert (response.status, response.headers["x-a"]) == (201, "1, 2")
            assert await response.read() == b"hello"


async def test_head_split_across_many_packets() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Long: " + b"v" * 300 + b"\r\nContent-Length: 3\r\n\r\nabc"
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        for start in range(0, len(reply), 40):
            writer.write(reply[start : start + 40])
            await writer.drain()
            await asyncio.sleep(0.002)

    async with RawServer(handler) as base, pool_for(base) as pool:
        response = await pool.request("GET", "/")
        assert response.headers == {"x-long": "v" * 300, "content-length": "3"}
        assert await response.read() == b"abc"


@pytest.mark.parametrize(
    "head",
    [
        # oversized: 100 KB of headers, arriving in pieces
        [b"HTTP/1.1 200 OK\r\n", *[b"X-Filler: " + b"f" * 1000 + b"\r\n"] * 100],
        # malformed: not a status code
        [b"HTTP/1.1 2xx Fine\r\nContent-Length: 2\r\n\r\nok"],
    ],
    ids=["oversized", "malformed"],
)
async def test_a_bad_response_head_is_a_payload_error(head: list[bytes]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        for piece in head:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.read()

    async with RawServer(handler) as base, pool_for(base) as pool:
        with pytest.raises(UpstreamPayloadError):
            await pool.request("GET", "/")


async def test_body_without_length_runs_until_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"part two")

    async with RawServer(handler) as base, pool_for(base) as pool:
        assert await (await pool.request("GET", "/")).read() == b"part one, part two"
        assert await (await pool.request("GET", "/")).read() == b"part one, part two"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
)
async def test_body_cut_midway_is_a_payload_error(reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(reply)

    async with RawServer(handler) as base, pool_for(base) as pool:
        response = await pool.request("GET", "/")
        with pytest.raises(UpstreamPayloadError):
            await response.read()
        chunks: list[bytes] = []
        response = await pool.request("GET", "/")
        with pytest.raises(UpstreamPayloadError):
            await collect(response, chunks)
        assert b"".join(chunks) in (b"only ten b", b"hello")  # what did arrive is handed over first


async def test_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then the handler returns and the connection closes

    server = RawServer(handler)
    async with server as base, pool_for(base) as pool:
        assert await (await pool.request("GET", "/")).read() == b"ok"
        await asyncio.sleep(0.05)
        assert pool._idle == deque()  # dropped when the close arrived, not when next needed
        assert await (await pool.request("GET", "/")).read() == b"ok"
    assert server.connections == 2


async def test_keepalive_race_is_retried_once_on_a_new_connection() -> None:
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if n == 1:
            await read_request(reader)  # the second request on the first connection: hang up without a byte
            requests += 1
            return
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = RawServer(handler)
    async with server as base, pool_for(base) as pool:
        assert await (await pool.request("GET", "/")).read() == b"ok"
        assert await (await pool.request("POST", "/", body=b"{}")).read() == b"ok"
    assert (server.connections, requests) == (2, 3)


async def test_fresh_connection_lost_before_the_head_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    server = RawServer(handler)
    async with server as base, pool_for(base) as pool:
        with pytest.raises(UpstreamConnectionError):
            await pool.request("GET", "/")
    assert server.connections == 1


async def test_idle_connections_expire_after_keepalive_seconds(app: App) -> None:
    async with pool_for(app.base, keepalive_seconds=0.05) as pool:
        await (await pool.request("GET", "/echo")).read()
        await asyncio.sleep(0.1)
        await (await pool.request("GET", "/echo")).read()
    assert app.connections == 2


async def test_connection_refused(closed_port_url: str) -> None:
    pool = pool_for(closed_port_url, headers={"Authorization": f"Bearer {SECRET}"})
    with pytest.raises(UpstreamConnectionError) as caught:
        await pool.request("GET", "/v1/models")
    assert SECRET not in str(caught.value)
    assert pool._open == 0
    await pool.aclose()


def stall_after(prefix: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(prefix)
        await reader.read()  # until the client gives up

    return handler


@pytest.mark.parametrize("what", ["head", "body"])
async def test_read_timeout_for_a_slow_head_or_a_stalled_body(what: str) -> None:
    prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome" if what == "body" else b"HTTP/1.1 2"
    async with RawServer(stall_after(prefix)) as base, pool_for(base, read_timeout=0.2) as pool:
        started = time.monotonic()
        if what == "head":
            with pytest.raises(TimeoutError):
                await pool.request("GET", "/")
        else:
            response = await pool.request("GET", "/")
            assert await response.__anext__() == b"some"
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await response.__anext__()
        assert 0.15 < time.monotonic() - started < 0.6
        assert pool._open == 0


async def test_a_steady_trickle_or_a_slow_reader_is_not_a_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(6):  # 0.36 s in all, never 0.2 s without data
                await asyncio.sleep(0.06)
                writer.write(b"1\r\nx\r\n")
            writer.write(b"0\r\n\r\n")

    async with RawServer(handler) as base, pool_for(base, read_timeout=0.2) as pool:
        assert await (await pool.request("GET", "/")).read() == b"xxxxxx"
        response = await pool.request("GET", "/")
        await asyncio.sleep(0.5)  # nobody waits, so nothing times out
        assert await response.read() == b"xxxxxx"


async def test_head_requests_have_no_body(app: App) -> None:
    async with pool_for(app.base) as pool:
        response = await pool.request("HEAD", "/echo")
        assert response.status == 200
        assert int(response.headers["content-length"]) > 0
        assert await response.read() == b""
        assert json.loads(await (await pool.request("GET", "/echo")).read())["method"] == "GET"


async def test_never_more_connections_than_the_limit(app: App) -> None:
    async with pool_for(app.base, max_connections=2) as pool:

        async def one() -> bytes:
            async with await pool.request("GET", "/slow") as response:
                return await response.read()

        assert await asyncio.gather(*(one() for _ in range(6))) == [b"slow"] * 6
    assert app.connections == 2
    assert app.max_in_flight == 2


async def test_releasing_a_half_read_response_closes_its_connection(app: App) -> None:
    async with pool_for(app.base) as pool:
        async with await pool.request("GET", "/big") as response:
            assert await response.read_at_most(10) == BIG[:10]
        assert await (await pool.request("GET", "/echo")).read()
    assert app.connections == 2


async def test_read_at_most_keeps_the_rest() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")

    async with RawServer(handler) as base, pool_for(base) as pool:
        response = await pool.request("GET", "/")
        assert await response.read_at_most(4) == b"0123"
        assert await response.read() == b"456789"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/x\r\nX-Evil: 1", None),
        ("/x\n", None),
        ("/x\x00", None),
        ("/x y", None),
        ("/x", {"X-Key": f"{SECRET}\r\nX-Evil: 1"}),
        ("/x", {"X-Key": f"{SECRET}\x00"}),
        ("/x", {"X-Evil\r\nX": SECRET}),
        ("/x", {"Bad Name": SECRET}),
        ("/x", {"Content-Length": "5"}),
    ],
)
async def test_header_injection_is_refused(path: str, headers: dict[str, str] | None) -> None:
    server = RawServer(stall_after(b""))  # never called
    async with server as base, pool_for(base) as pool:
        with pytest.raises(ValueError) as caught:
            await pool.request("GET", path, headers=headers)
        assert SECRET not in str(caught.value)
    assert server.connections == 0
    with pytest.raises(ValueError):
        pool_for("http://127.0.0.1:1", headers={"X-Key": "a\nb"})


async def test_cancelled_requests_leave_the_pool_usable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await read_request(reader)
            if head.startswith(b"GET /hang"):
                await reader.read()
                return
            if head.startswith(b"GET /stall"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
                await reader.read()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: problems.append(context))
    try:
        server = RawServer(handler)
        async with server as base, pool_for(base, max_connections=1) as pool:
            hanging = asyncio.create_task(pool.request("GET", "/hang"))
            await asyncio.sleep(0.05)
            queued = asyncio.create_task(pool.request("GET", "/ok"))  # waits for the only slot
            await asyncio.sleep(0.05)
            queued.cancel()
            hanging.cancel()
            for task in (queued, hanging):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await (await pool.request("GET", "/ok")).read() == b"ok"

            response = await pool.request("GET", "/stall")
            assert await response.__anext__() == b"ab"
            reading = asyncio.create_task(response.read())
            await asyncio.sleep(0.05)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            assert await (await pool.request("GET", "/ok")).read() == b"ok"
            assert pool._open == 1
        del hanging, queued, reading, response
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert server.connections == 3
    assert problems == []


def test_base_url_must_be_plain_http() -> None:
    for url in ("ftp://x/", "http://user:pw@x/", "http:///v1", "http://x/v1?key=1"):
        with pytest.raises(ValueError):
            pool_for(url)
