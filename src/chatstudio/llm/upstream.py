"""A lean HTTP/1.1 client for model upstreams: an asyncio.Protocol per connection and httptools' parser.

aiohttp costs about four times the client CPU per small request, and the proxy overhead benchmark is
dominated by it. This client does only what upstream calls need: one request per connection at a time,
keep-alive, bounded connections, Content-Length, chunked and read-until-close bodies, flow control and
read timeouts.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import cast
from urllib.parse import urlencode, urlsplit

import httptools

__all__ = ["UpstreamConnectionError", "UpstreamPayloadError", "UpstreamPool", "UpstreamResponse"]

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
_CACHE_SIZE = 256
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MANAGED = frozenset({"content-length", "transfer-encoding"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]").search
# Stricter than CR/LF/NUL: a space or control character in the target would also garble the request line.
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]").search


class UpstreamConnectionError(Exception):
    """No response head: the upstream could not be reached, refused, or dropped the connection first."""


class UpstreamPayloadError(Exception):
    """The response broke off mid-body or was not valid HTTP."""


class UpstreamResponse:
    """Status and headers of a response whose body is still arriving; also the async iterator of its chunks."""

    __slots__ = (
        "_buffered", "_chunks", "_complete", "_conn", "_exc", "_got_data", "_head_done", "_head_only",
        "_headers_only", "_interim", "_keep_alive", "_loop", "_mark", "_parser", "_read_timeout", "_timer",
        "_trailing", "_until_close", "_waiter", "headers", "status",
    )  # fmt: skip

    def __init__(self, conn: _Connection, read_timeout: float, head_only: bool) -> None:
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self._headers_only = head_only  # a HEAD request: the parser cannot know the body is absent
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._mark = 0.0
        self._exc: BaseException | None = None
        self._got_data = self._head_done = self._complete = self._interim = False
        self._keep_alive = self._trailing = self._until_close = self._head_only = False

    # httptools callbacks. They must not raise: the parser would turn that into a generic error.
    def on_message_begin(self) -> None:
        if self._complete:  # bytes after our response: the connection's state is unknown
            self._trailing = True

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        headers = cast(dict[str, str], self.headers)
        text = value.decode("latin-1")
        headers[key] = headers[key] + ", " + text if key in headers else text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx interim: the real head follows
            self._interim = True
            self.headers = {}
            return
        self.status = status
        self._head_done = True
        if self._headers_only:
            self._complete = True
        else:
            encoding = self.headers.get("transfer-encoding", "")
            self._until_close = "content-length" not in self.headers and "chunked" not in encoding.lower()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        """Record the error every later read raises, and drop the connection: it is mid-message."""
        if self._exc is None and not self._complete:
            self._exc = exc
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.response = None
            conn.close()
        self._finish()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._conn = None
        if self._complete:
            return
        error: Exception
        if not self._head_done:
            error = UpstreamConnectionError("the upstream closed the connection before responding")
        elif self._until_close and exc is None:
            self._complete = True  # no length and not chunked: closing the connection ends the body
            self._finish()
            return
        else:
            error = UpstreamPayloadError("the upstream closed the connection mid-body")
        error.__cause__ = exc
        self._fail(error)

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._complete or self._exc is not None:
            return  # nobody waits: the next wait arms a new timer
        deadline = self._mark + self._read_timeout
        if self._loop.time() + 0.001 < deadline:  # data arrived since the timer was armed
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        what = "the next body chunk" if self._head_done else "the response head"
        self._fail(TimeoutError(f"no data from the upstream for {self._read_timeout:g} s while waiting for {what}"))

    async def _wait(self) -> None:
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._mark = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._mark + self._read_timeout, self._on_timer)
        try:
            await waiter
        except asyncio.CancelledError:
            self._fail(UpstreamPayloadError("the read was cancelled"))
            raise

    async def _wait_head(self) -> None:
        while not self._head_done:
            if self._exc is not None:
                raise self._exc
            await self._wait()

    def _take(self) -> bytes:
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join([chunks.popleft() for _ in range(len(chunks))])
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER and self._conn is not None:
            self._conn.resume()
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
            await self._wait()
        return self._take()

    def iter_any(self) -> AsyncIterator[bytes]:
        return self

    async def read(self) -> bytes:
        parts = []
        while not self._complete or self._chunks:
            if self._chunks:
                parts.append(self._take())
            elif self._exc is not None:
                raise self._exc
            else:
                await self._wait()
        if self._exc is not None:
            raise self._exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

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
                await self._wait()
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back. It was already pooled if the whole body arrived; otherwise it is closed."""
        if self._conn is not None:
            self._fail(UpstreamPayloadError("the response was released before its body was read"))

    async def aclose(self) -> None:
        self.release()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class _Connection(asyncio.Protocol):
    __slots__ = ("closed", "idle_since", "loop", "paused", "pool", "response", "reused", "transport")

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = self.paused = self.reused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # unsolicited bytes (often a 408 before an idle close): never reuse
            self.close()
            return
        response._got_data = True
        response._mark = self.loop.time()
        try:
            response._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            error = UpstreamPayloadError("the upstream sent a malformed HTTP response")
            error.__cause__ = exc
            response._fail(error)
            return
        if response._complete and response._conn is self:
            # The body is all buffered in the response, so the connection is free before the caller reads it.
            self.response = response._conn = None
            response._finish()
            if response._keep_alive and not response._trailing:
                self.pool._release(self)
            else:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.pool._closed_one(self)
        response, self.response = self.response, None
        if response is not None:
            response._connection_lost(exc)

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool._closed_one(self)


class UpstreamPool:
    """Keep-alive connections to one upstream (scheme, host, port and path prefix taken from `base_url`)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] = {},  # noqa: B006 - never mutated
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 512,
        keepalive_seconds: float = 15.0,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment or url.username:
            raise ValueError("base_url must be http(s)://host[:port][/path] without credentials or query")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/")
        if _BAD_TARGET(self._prefix):
            raise ValueError("base_url path must be percent-encoded")
        host = f"[{self._host}]" if ":" in self._host else self._host
        if url.port is not None and url.port != (443 if self._ssl else 80):
            host = f"{host}:{url.port}"
        base = {"host": ("Host", host), "accept-encoding": ("Accept-Encoding", "identity")}
        base["user-agent"] = ("User-Agent", "chatstudio")
        self._base = self._merge(base, headers)
        self._default_block = self._block(self._base)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max = max_connections
        self._keepalive = keepalive_seconds
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._lines: dict[tuple[str, str], bytes] = {}
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}

    @staticmethod
    def _merge(into: dict[str, tuple[str, str]], headers: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        merged = dict(into)
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name) or _BAD_VALUE(value):
                raise ValueError("invalid header: names must be tokens; values must not hold CR, LF or NUL")
            if name.lower() in _MANAGED:
                raise ValueError("Content-Length and Transfer-Encoding are set by the pool")
            merged[name.lower()] = (name, value.strip())
        return merged

    @staticmethod
    def _block(headers: dict[str, tuple[str, str]]) -> bytes:
        return "".join(f"{name}: {value}\r\n" for name, value in headers.values()).encode("latin-1")

    def _head(self, method: str, path: str, size: int, headers: Mapping[str, str] | None, params: object) -> bytes:
        line = self._lines.get((method, path)) if params is None else None
        if line is None:
            if not _TOKEN.fullmatch(method):
                raise ValueError("invalid method")
            target = self._prefix + path
            if params:
                target += ("&" if "?" in target else "?") + urlencode(cast(Mapping[str, str], params))
            if _BAD_TARGET(target) or not target.startswith("/"):
                raise ValueError("the request path must start with / and hold no spaces, CR, LF or NUL")
            line = f"{method} {target} HTTP/1.1\r\n".encode("ascii")
            if params is None:
                if len(self._lines) >= _CACHE_SIZE:
                    self._lines.clear()
                self._lines[(method, path)] = line
        if headers:
            key = tuple(headers.items())
            block = self._blocks.get(key)
            if block is None:
                block = self._block(self._merge(self._base, headers))
                if len(self._blocks) >= _CACHE_SIZE:
                    self._blocks.clear()
                self._blocks[key] = block
        else:
            block = self._default_block
        if size or method in _BODY_METHODS:
            return b"%s%sContent-Length: %d\r\n\r\n" % (line, block, size)
        return line + block + b"\r\n"

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send the request; return once the status line and headers have arrived."""
        data = self._head(method, path, len(body), headers, params)
        if body:
            data += body
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError("this UpstreamPool is bound to another event loop")
            self._loop = loop
        fresh = False
        while True:
            conn = await self._acquire(loop, fresh)
            response = conn.response = UpstreamResponse(conn, self._read_timeout, method == "HEAD")
            assert conn.transport is not None
            conn.transport.write(data)
            try:
                await response._wait_head()
            except UpstreamConnectionError:
                # The keep-alive race: the server closed an idle connection as we wrote; it never saw the request.
                if conn.reused and not response._got_data and not fresh:
                    fresh = True
                    continue
                raise
            return response

    async def _acquire(self, loop: asyncio.AbstractEventLoop, fresh: bool) -> _Connection:
        while True:
            if self._closed:
                raise RuntimeError("the UpstreamPool is closed")
            idle = self._idle
            if idle and not fresh:
                conn = idle.pop()
                if loop.time() - conn.idle_since <= self._keepalive:
                    conn.reused = True
                    return conn
                conn.close()
                continue
            if self._open < self._max:
                return await self._connect(loop)
            if fresh and idle:
                idle.popleft().close()
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on the slot this task was woken for
                else:
                    self._waiters.remove(waiter)
                raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        self._open += 1
        conn = _Connection(self, loop)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except BaseException as exc:
            if conn.transport is not None:
                conn.transport.close()
            if not conn.closed:
                conn.closed = True
                self._closed_one(conn)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"connecting to {self._host}:{self._port} timed out") from None
            if isinstance(exc, OSError):
                raise UpstreamConnectionError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        conn.resume()
        idle = self._idle
        now = conn.idle_since = conn.loop.time()
        # Idle connections are ordered oldest first, so expired ones are found without a scan.
        while idle and now - idle[0].idle_since > self._keepalive:
            idle.popleft().close()
        idle.append(conn)
        if self._waiters:
            self._wake_one()

    def _closed_one(self, conn: _Connection) -> None:
        self._open -= 1
        if conn in self._idle:  # closed by the server while idle
            self._idle.remove(conn)
        if self._waiters:
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        """Close idle connections now, and busy ones as they are released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
        while self._waiters:
            self._wake_one()

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
