"""One upstream connection and the response it carries, for llm.upstream's pool: an asyncio.Protocol
fed to httptools' parser, with flow control and a lazily re-armed read timeout.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from chatstudio.llm.upstream import UpstreamPool

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_HEAD = 64 * 1024


class UpstreamConnectionError(Exception):
    """No response head: the upstream could not be reached, refused, or dropped the connection first."""


class UpstreamPayloadError(Exception):
    """The response broke off mid-body or was not valid HTTP."""


def _parse_head(data: bytes) -> dict[str, str]:
    start = len(data) - len(data.lstrip(b"\r\n"))  # the parser skips blank lines before a status line
    end = data.index(b"\r\n\r\n", start)
    while data[start + 9 : start + 10] == b"1":  # a 1xx interim head: the real one follows
        start = end + 4
        end = data.index(b"\r\n\r\n", start)
    headers: dict[str, str] = {}
    # Strict llhttp (the default) has checked the head: CRLF line ends, token names, no line folding.
    for line in data[start:end].decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        key, value = name.lower(), value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


class UpstreamResponse:
    """Status and headers of a response whose body may still be arriving; also the async iterator of its chunks."""

    __slots__ = (
        "_buffered", "_chunks", "_complete", "_conn", "_exc", "_head_done", "_headers", "_headers_only", "_interim",
        "_keep_alive", "_loop", "_mark", "_packets", "_parser", "_trailing", "_waiter", "status",
    )  # fmt: skip
    # httptools looks every callback up per parser; a missing one costs a swallowed AttributeError, None does not.
    # No on_header either: a Python call per header is the parser's main cost, so `headers` re-reads the head
    # (already validated by the parser) only when someone asks.
    on_url = on_status = on_header = on_chunk_header = on_chunk_complete = None

    def __init__(self, conn: _Connection, head_only: bool) -> None:
        self.status = 0
        self._packets: list[bytes] = []  # what arrived up to the end of the head, for `headers`
        self._headers: dict[str, str] | None = None
        self._headers_only = head_only  # a HEAD request: the parser cannot know that no body follows
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        # The parser holds this object's callbacks: a reference cycle, broken once the response has
        # ended or failed, so it is freed by reference counting rather than by the cycle collector.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._mark = 0.0
        self._exc: BaseException | None = None
        self._head_done = self._complete = self._interim = self._keep_alive = self._trailing = False

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-cased names; repeated headers joined with ", "."""
        headers = self._headers
        if headers is None:
            headers = self._headers = _parse_head(b"".join(self._packets))
            self._packets = []
        return headers

    # httptools callbacks. They must not raise (the parser would turn that into a generic error), and they
    # leave waking the reader to data_received, once per network read rather than once per callback.
    def on_message_begin(self) -> None:
        if self._complete:  # bytes after our response: the connection's state is unknown
            self._trailing = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # callbacks run inside feed_data, while the parser is attached
        status = self._parser.get_status_code()
        if status < 200:  # 1xx interim: the real head follows
            self._interim = True
            return
        self.status = status
        self._head_done = True
        self._complete = self._headers_only

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.reading(False)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        """Record the error every later read raises, and drop the connection: it is mid-message."""
        if self._exc is None and not self._complete:
            self._exc = exc
        conn, self._conn = self._conn, None
        self._parser = None
        if conn is not None:
            conn.response = None
            conn.close()
        self._wake()

    def _cancelled(self) -> None:
        self._fail(UpstreamPayloadError("the read was cancelled"))

    def _connection_lost(self, exc: Exception | None) -> None:
        self._conn = None
        self._parser = None
        if self._complete:
            return
        error: Exception
        if not self._head_done:
            error = UpstreamConnectionError("the upstream closed the connection before responding")
        elif exc is None and self._until_close():
            self._complete = True  # no length and not chunked: closing the connection ends the body
            self._wake()
            return
        else:
            error = UpstreamPayloadError("the upstream closed the connection mid-body")
        error.__cause__ = exc
        self._fail(error)

    def _until_close(self) -> bool:
        headers = self.headers
        return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()

    def _wait(self) -> asyncio.Future[None]:
        """A future for the next parser event. Only called while the connection is attached."""
        conn = self._conn
        assert conn is not None
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._mark = loop.time()
        if conn.timer is None:
            conn.timer = loop.call_at(self._mark + conn.pool._read_timeout, conn.on_timer)
        return waiter

    def _take(self) -> bytes:
        chunks = self._chunks
        if len(chunks) == 1:
            chunk = chunks.popleft()
        else:
            chunk = b"".join(chunks)
            chunks.clear()
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER and self._conn is not None:
            self._conn.reading(True)
        return chunk

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        """Whatever body bytes have arrived (chunked encoding already removed), waiting if there are none."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._complete:
                raise StopAsyncIteration
            try:
                await self._wait()
            except asyncio.CancelledError:
                self._cancelled()
                raise
        return self._take()

    def iter_any(self) -> AsyncIterator[bytes]:
        return self

    async def read(self) -> bytes:
        if self._complete:  # the usual case: the whole body came with the head
            return self._take() if self._chunks else b""
        return await self.read_at_most(sys.maxsize)

    async def read_at_most(self, limit: int) -> bytes:
        """The body cut to `limit` bytes; reading stops there and the rest stays unread."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            if self._chunks:
                chunk = self._take()
                if size + len(chunk) > limit:
                    self._chunks.appendleft(chunk[limit - size :])
                    self._buffered += len(chunk) - (limit - size)
                    chunk = chunk[: limit - size]
                parts.append(chunk)
                size += len(chunk)
            elif self._exc is not None:
                raise self._exc
            elif self._complete:
                break
            else:
                try:
                    await self._wait()
                except asyncio.CancelledError:
                    self._cancelled()
                    raise
        return b"".join(parts)  # a single part comes back as is, uncopied

    def release(self) -> None:
        """Give the connection back. It was already pooled if the whole body arrived; otherwise it is closed."""
        if self._conn is not None:
            self._fail(UpstreamPayloadError("the response was released before its body was read"))

    async def aclose(self) -> None:
        self.release()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _Connection(asyncio.Protocol):
    __slots__ = ("closed", "idle", "idle_since", "loop", "paused", "pool", "response", "reused", "timer", "transport")
    transport: asyncio.Transport  # set by connection_made, before the pool hands the connection out

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.response: UpstreamResponse | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = self.idle = self.paused = self.reused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # unsolicited bytes (often a 408 before an idle close): never reuse
            self.close()
            return
        parser = response._parser
        if parser is None:  # the response already failed; its connection is on its way out
            self.close()
            return
        if not response._head_done:
            response._packets.append(data)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            error = UpstreamPayloadError("the upstream sent a malformed HTTP response")
            error.__cause__ = exc
            response._fail(error)
            return
        if not response._head_done and len(response._packets) > 1 and sum(map(len, response._packets)) > MAX_HEAD:
            response._fail(UpstreamPayloadError("the upstream sent an oversized response head"))
            return
        response._wake()
        if response._complete and response._conn is self:
            # The body is all buffered in the response, so the connection is free before the caller reads it.
            self.response = response._conn = None
            response._parser = None
            if response._keep_alive and not response._trailing:
                self.pool._release(self)
            else:
                self.close()

    def on_timer(self) -> None:
        """One timer per connection, re-armed lazily: each wait costs a clock read, not a timer of its own."""
        self.timer = None
        response = self.response
        if response is None or response._waiter is None:
            return  # nobody waits; the next wait arms a new timer
        timeout = self.pool._read_timeout
        deadline = response._mark + timeout
        if self.loop.time() + 0.001 < deadline:
            self.timer = self.loop.call_at(deadline, self.on_timer)
            return
        what = "the next body chunk" if response._head_done else "the response head"
        response._fail(TimeoutError(f"no data from the upstream for {timeout:g} s while waiting for {what}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.pool._closed_one(self)
        response, self.response = self.response, None
        if response is not None:
            response._connection_lost(exc)

    def reading(self, on: bool) -> None:
        if self.paused == on and not self.closed:
            self.paused = not on
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if hasattr(self, "transport"):  # not when connecting failed
                self.transport.close()
            self.pool._closed_one(self)
