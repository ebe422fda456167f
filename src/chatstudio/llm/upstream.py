"""A lean HTTP/1.1 client for model upstreams: an asyncio.Protocol per connection and httptools' parser.

aiohttp costs about three times the client CPU per small request, which dominated the proxy overhead
benchmark. This does only what upstream calls need: one request per connection at a time, keep-alive,
a connection limit, Content-Length, chunked and read-until-close bodies, flow control and read timeouts.
Responses are parsed with llhttp's strict defaults (aiohttp relaxes some rules for responses), so a
non-compliant upstream gets an UpstreamPayloadError rather than a best guess.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import urlencode, urlsplit

from chatstudio.llm.upstream_connection import (
    UpstreamConnectionError,
    UpstreamPayloadError,
    UpstreamResponse,
    _Connection,
)

__all__ = ["UpstreamConnectionError", "UpstreamPayloadError", "UpstreamPool", "UpstreamResponse"]

_CACHE_SIZE = 256
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MANAGED = frozenset({"content-length", "transfer-encoding"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]").search
# Stricter than CR/LF/NUL: a space or control character in the target would also garble the request line.
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]").search
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class UpstreamPool:
    """Keep-alive connections to one upstream (scheme, host, port and path prefix taken from `base_url`)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] = _NO_HEADERS,
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
        self._sni = self._host if self._ssl else None
        self._prefix = url.path.rstrip("/")
        if _BAD_TARGET(self._prefix):
            raise ValueError("base_url path must be percent-encoded")
        host = f"[{self._host}]" if ":" in self._host else self._host
        if url.port is not None and url.port != (443 if self._ssl else 80):
            host = f"{host}:{url.port}"
        base = {"host": ("Host", host), "accept-encoding": ("Accept-Encoding", "identity")}
        base["user-agent"] = ("User-Agent", "chatstudio")
        self._base = self._merge(base, headers)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max = max_connections
        self._keepalive = keepalive_seconds
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._heads: dict[tuple[str, str, tuple[tuple[str, str], ...] | None], bytes] = {}

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

    def _head(
        self, method: str, path: str, size: int, headers: Mapping[str, str] | None, params: Mapping[str, str] | None
    ) -> bytes:
        """The request head; validated and encoded once per (method, path, headers) and then cached."""
        key = (method, path, tuple(headers.items()) if headers else None)
        head = self._heads.get(key) if params is None else None
        if head is None:
            if not _TOKEN.fullmatch(method):
                raise ValueError("invalid method")
            target = self._prefix + path
            if params:
                target += ("&" if "?" in target else "?") + urlencode(params)
            if _BAD_TARGET(target) or not target.startswith("/"):
                raise ValueError("the request path must start with / and hold no spaces, CR, LF or NUL")
            merged = self._merge(self._base, headers) if headers else self._base
            head = f"{method} {target} HTTP/1.1\r\n".encode("ascii") + self._block(merged)
            if params is None:
                if len(self._heads) >= _CACHE_SIZE:
                    self._heads.clear()
                self._heads[key] = head
        if size or method in _BODY_METHODS:
            return b"%sContent-Length: %d\r\n\r\n" % (head, size)
        return head + b"\r\n"

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send the request; return once the status line and headers have arrived.

        Release the response (or use it as an async context manager): its connection goes back to the pool
        once the whole body has arrived, and is closed if it is released before that.
        """
        data = self._head(method, path, len(body), headers, params)
        if body:
            data += body
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError("this UpstreamPool is bound to another event loop")
            self._loop = loop
        retried = False
        while True:
            conn = None if retried else self._pop_idle(loop)
            if conn is None:
                conn = await self._acquire(loop, retried)
            response = conn.response = UpstreamResponse(conn, method == "HEAD")
            conn.transport.write(data)
            try:
                while not response._head_done:
                    if response._exc is not None:
                        raise response._exc
                    await response._wait()
            except asyncio.CancelledError:
                response._cancelled()
                raise
            except UpstreamConnectionError:
                # The keep-alive race: the server closed an idle connection as we wrote; it never saw the request.
                if conn.reused and not response._packets and not retried:
                    retried = True
                    continue
                raise
            return response

    def _pop_idle(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            # A transport can be closing (the server's FIN was read) before connection_lost has run.
            if loop.time() - conn.idle_since <= self._keepalive and not conn.transport.is_closing():
                conn.reused = True
                return conn
            conn.close()
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, fresh: bool) -> _Connection:
        while True:
            if self._closed:
                raise RuntimeError("the UpstreamPool is closed")
            conn = None if fresh else self._pop_idle(loop)
            if conn is not None:
                return conn
            if self._open < self._max:
                return await self._connect(loop)
            if fresh and self._idle:
                self._evict()  # make room for the new connection a retry needs
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
                    lambda: conn, self._host, self._port, ssl=self._ssl, server_hostname=self._sni
                )
        except BaseException as exc:
            conn.close()
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
        if conn.paused:
            conn.reading(True)
        idle = self._idle
        now = conn.idle_since = conn.loop.time()
        # Idle connections are ordered oldest first, so expired ones are found without a scan.
        while idle and now - idle[0].idle_since > self._keepalive:
            self._evict()
        conn.idle = True
        idle.append(conn)
        if self._waiters:
            self._wake_one()

    def _evict(self) -> None:
        conn = self._idle.popleft()
        conn.idle = False
        conn.close()

    def _closed_one(self, conn: _Connection) -> None:
        self._open -= 1
        if conn.idle:  # closed by the server while idle
            conn.idle = False
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
            self._evict()
        while self._waiters:
            self._wake_one()

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
