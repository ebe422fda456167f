"""A small closed-loop HTTP/1.1 load generator on raw asyncio protocols.

Each of `concurrency` keep-alive connections sends a request, reads the whole response (Content-Length
or chunked), and sends the next, for `duration` seconds after `warmup`. Per request it records the
latency (first byte sent to last byte read) and the time to first chunk (to the first body byte).

Raw protocols instead of an HTTP client library, so the generator costs a few microseconds per
response and is not what limits the direct-upstream baseline it shares a core with. A response counts
as an error unless its status is the expected one and its body ends with the expected bytes (a stream
that stops early is an error, not a fast response).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

# Builds the raw request for (connection index, request number on that connection).
RequestFactory = Callable[[int, int], bytes]


def http_request(
    method: str, path: str, *, host: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    status: int
    body: bytes
    first_byte: float
    end: float


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, keep_body: bool) -> None:
        self.keep_body = keep_body
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self._reset()

    def _reset(self) -> None:
        self.buffer = bytearray()
        self.status = 0
        self.in_body = False
        self.chunked = False
        self.remaining = 0
        self.first_byte = 0.0
        self.body = bytearray()
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed mid-response"))

    def send(self, raw: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if not self.in_body:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._headers(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
            self.in_body = True
        if self.buffer and not self.first_byte:
            self.first_byte = now
        if self.chunked:
            self._chunks(now)
        else:
            self._take(len(self.buffer))
            if self.remaining <= 0:
                self._finish(now)

    def _headers(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        self.remaining = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.remaining = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True

    def _take(self, size: int) -> None:
        piece = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.remaining -= size
        if self.keep_body:
            self.body += piece
        self.tail = (self.tail + piece)[-64:]

    def _chunks(self, now: float) -> None:
        while True:
            if self.remaining > 0:
                if len(self.buffer) < self.remaining + 2:
                    return
                self._take(self.remaining)
                del self.buffer[:2]
                self.remaining = 0
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self.buffer[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                if len(self.buffer) < line_end + 4:
                    return
                del self.buffer[: line_end + 4]
                self._finish(now)
                return
            del self.buffer[: line_end + 2]
            self.remaining = size

    def _finish(self, now: float) -> None:
        waiter, self.waiter = self.waiter, None
        body = bytes(self.body) if self.keep_body else self.tail
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self.status, body, self.first_byte or now, now))


async def connect(host: str, port: int, *, keep_body: bool = False) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: _Connection(keep_body), host, port)
    return protocol


async def fetch(host: str, port: int, raw: bytes, *, timeout: float = 30) -> Response:
    """One request on a fresh connection, whole body kept (set-up calls, probes)."""
    connection = await connect(host, port, keep_body=True)
    try:
        return await asyncio.wait_for(connection.send(raw), timeout)
    finally:
        assert connection.transport is not None
        connection.transport.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, max(0, round(q * 1000) - 1))]


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    first_error: str | None = None
    # Every valid response, warm-up and tail included (to compare with what the server stored).
    total_ok: int = 0
    # Started inside the window but ended (or failed) after it: a stall shows up here.
    late: int = 0
    # CPU the server under test spent over the run (warm-up and tail included, as total_ok is):
    # steadier than throughput on a machine whose speed drifts from run to run.
    server_cpu_seconds: float = 0.0

    def merge(self, other: Result) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.ttfc += other.ttfc
        self.first_error = self.first_error or other.first_error
        self.total_ok += other.total_ok
        self.late += other.late
        self.server_cpu_seconds += other.server_cpu_seconds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        ms = 1000.0
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "latency_ms": {
                "p50": round(percentile(self.latencies, 0.5) * ms, 3),
                "p90": round(percentile(self.latencies, 0.9) * ms, 3),
                "p99": round(percentile(self.latencies, 0.99) * ms, 3),
            },
            "ttfc_ms": {
                "p50": round(percentile(self.ttfc, 0.5) * ms, 3),
                "p99": round(percentile(self.ttfc, 0.99) * ms, 3),
            },
            "late": self.late,
            "first_error": self.first_error,
            "server_cpu_us_per_request": (
                round(1e6 * self.server_cpu_seconds / self.total_ok, 1)
                if self.server_cpu_seconds and self.total_ok
                else None
            ),
        }


async def run(
    host: str,
    port: int,
    make_request: RequestFactory,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 0.5,
    expect_status: int = 200,
    expect_tail: bytes = b"",
    expect_in_body: bytes = b"",
    timeout: float = 30,
) -> Result:
    """Closed loop: counts the responses that end inside the measured window (after warmup)."""
    keep_body = bool(expect_in_body)
    connections = [await connect(host, port, keep_body=keep_body) for _ in range(concurrency)]
    loop_start = time.perf_counter()
    window_start = loop_start + warmup
    deadline = window_start + duration
    result = Result()

    async def worker(index: int, connection: _Connection) -> None:
        sequence = 0
        while True:
            started = time.perf_counter()
            if started >= deadline:
                return
            raw = make_request(index, sequence)
            sequence += 1
            try:
                response = await asyncio.wait_for(connection.send(raw), timeout)
            except (ConnectionError, TimeoutError) as exc:
                if started >= window_start:
                    result.errors += 1
                    result.first_error = result.first_error or repr(exc)
                    result.late += time.perf_counter() > deadline
                connection = connections[index] = await connect(host, port, keep_body=keep_body)
                continue
            valid = response.status == expect_status and response.body.endswith(expect_tail)
            if valid and expect_in_body:
                valid = expect_in_body in response.body
            result.total_ok += valid
            # Throughput counts the responses that end inside the window, however long they took.
            if response.end < window_start or response.end > deadline:
                result.late += window_start <= started < deadline < response.end
                continue
            if not valid:
                result.errors += 1
                result.first_error = result.first_error or f"HTTP {response.status}: {response.body[-160:]!r}"
                continue
            result.requests += 1
            result.latencies.append(response.end - started)
            result.ttfc.append(response.first_byte - started)

    try:
        await asyncio.gather(*(worker(i, c) for i, c in enumerate(connections)))
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
    result.seconds = duration
    return result
