"""The served HTTP protocol: a response's head leaves in one write with its body, and never waits long for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from chatstudio.http_protocol import HeadJoiningTransport, HttpProtocol

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class WriteCounter(asyncio.Transport):
    """A real socket transport whose writes are counted on their way through."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()


@asynccontextmanager
async def _socket() -> AsyncIterator[tuple[WriteCounter, asyncio.StreamReader]]:
    """A connected TCP socket: its transport (writes counted) and what its peer reads."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, "127.0.0.1", port)
    peer, peer_writer = await asyncio.wait_for(accepted.get(), 5)
    try:
        yield WriteCounter(transport), peer
    finally:
        transport.close()
        peer_writer.close()
        await peer_writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_a_head_leaves_in_one_write_with_the_body_that_follows_it() -> None:
    async with _socket() as (counter, peer):
        joining = HeadJoiningTransport(counter, asyncio.get_running_loop())
        joining.write(HEAD)
        assert counter.writes == []
        assert joining.get_write_buffer_size() == len(HEAD)
        joining.write(b"hello")
        assert counter.writes == [HEAD + b"hello"]
        assert await asyncio.wait_for(peer.readexactly(len(HEAD) + 5), 5) == HEAD + b"hello"
        await asyncio.sleep(0)  # the scheduled flush finds nothing held
        assert len(counter.writes) == 1


async def test_a_head_without_a_body_yet_leaves_on_the_loops_next_round() -> None:
    async with _socket() as (counter, peer):
        joining = HeadJoiningTransport(counter, asyncio.get_running_loop())
        joining.write(HEAD)
        await asyncio.sleep(0)
        assert counter.writes == [HEAD]
        assert await asyncio.wait_for(peer.readexactly(len(HEAD)), 5) == HEAD
        joining.write(b"hello")  # later body bytes go straight out
        assert counter.writes == [HEAD, b"hello"]


async def test_other_writes_are_not_held_and_closing_sends_a_held_head_first() -> None:
    async with _socket() as (counter, peer):
        joining = HeadJoiningTransport(counter, asyncio.get_running_loop())
        joining.write(b"0\r\n\r\n")
        assert counter.writes == [b"0\r\n\r\n"]
        joining.write(HEAD)
        joining.close()
        assert counter.writes == [b"0\r\n\r\n", HEAD]
        assert await asyncio.wait_for(peer.read(), 5) == b"0\r\n\r\n" + HEAD  # then end of stream


async def test_an_aborted_connection_drops_a_held_head() -> None:
    async with _socket() as (counter, peer):
        joining = HeadJoiningTransport(counter, asyncio.get_running_loop())
        joining.write(HEAD)
        joining.abort()
        await asyncio.sleep(0)
        assert counter.writes == []
        try:
            received = await asyncio.wait_for(peer.read(), 5)
        except ConnectionResetError:  # an abort resets the connection; a peer may also see a plain end
            received = b""
        assert received == b""


class _CountingProtocol(HttpProtocol):
    transports: list[WriteCounter] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        counter = WriteCounter(transport)
        self.transports.append(counter)
        super().connection_made(counter)


@asynccontextmanager
async def _served(app: Any) -> AsyncIterator[int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=_CountingProtocol, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
    await writer.drain()
    return reader, writer


async def test_uvicorn_sends_a_whole_json_response_in_one_write() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    _CountingProtocol.transports = []
    async with _served(app) as port:
        reader, writer = await _request(port)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert await asyncio.wait_for(reader.readexactly(11), 5) == b'{"ok":true}'
        writer.close()
        await writer.wait_closed()
    (counter,) = _CountingProtocol.transports
    assert len(counter.writes) == 1
    assert counter.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert counter.writes[0].endswith(b'\r\n\r\n{"ok":true}')


async def test_a_stream_shows_its_status_before_its_first_chunk_is_ready() -> None:
    status_seen = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await asyncio.wait_for(status_seen.wait(), 5)  # the client must see the head while the body waits
        await send({"type": "http.response.body", "body": b"data: 1\n\n"})

    async with _served(app) as port:
        reader, writer = await _request(port)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        status_seen.set()
        assert await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 5)
        writer.close()
        await writer.wait_closed()


async def test_a_client_waiting_for_100_continue_gets_it_and_then_the_answer() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async with _served(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        await writer.drain()
        # The interim head is held like any other, but only until the loop's next round: no deadlock.
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.close()
        await writer.wait_closed()
