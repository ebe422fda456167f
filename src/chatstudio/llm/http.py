"""Plumbing shared by the HTTP adapters: a connection pool per provider, an SSE reader, and the one
boundary where HTTP statuses, provider error bodies and transport failures become our LLMError classes.

The pool is our own (llm.upstream, HTTP/1.1 on httptools' parser) rather than aiohttp's or httpx's:
per relayed call aiohttp cost ~115 µs of CPU and httpx more, against ~40 µs for the pool, and the
proxy overhead benchmarks measure little else.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import orjson

from chatstudio.llm.base import (
    ContextTooLong,
    LLMError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBusy,
    ProviderUnavailable,
)
from chatstudio.llm.upstream import UpstreamConnectionError, UpstreamPayloadError, UpstreamPool, UpstreamResponse

log = logging.getLogger("chatstudio.llm")

# Chat streams are long-lived, so the default pool of 100 would cap concurrent replies per worker.
MAX_CONNECTIONS = 512
MAX_ERROR_BODY = 64 * 1024
MAX_DETAIL_CHARS = 300

# Each vendor words "the prompt does not fit" differently; these are the phrases they use.
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "reduce the length",
)
_AUTH_KINDS = frozenset({"authentication_error", "permission_error", "invalid_api_key", "insufficient_quota"})
_BUSY_KINDS = frozenset({"rate_limit_error", "rate_limit_exceeded", "requests", "tokens"})
_BAD_REQUEST_KINDS = frozenset({"invalid_request_error", "not_found_error", "request_too_large", "invalid_request"})


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """A request body. orjson is several times faster than the standard encoder on every call; the
    standard one takes what orjson refuses (an integer past 64 bits, say a client's huge `seed`)."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload).encode()


_STREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class ChunkSource(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


class SSEReader:
    """Server-sent events from a response body, one `SSEEvent` per blank-line-terminated block.

    A class rather than an async generator so that breaking out of the loop leaves nothing to finalise.
    Lines are split on bytes, so a multi-byte character split across network reads stays whole.
    """

    __slots__ = ("_buffer", "_chunks", "_data", "_eof", "_event", "_pending")

    def __init__(self, content: ChunkSource) -> None:
        self._chunks = content.iter_any().__aiter__()
        self._buffer = b""
        self._pending: deque[SSEEvent] = deque()
        self._event = ""
        self._data: list[str] = []
        self._eof = False

    def __aiter__(self) -> SSEReader:
        return self

    async def __anext__(self) -> SSEEvent:
        while not self._pending:
            if self._eof:
                raise StopAsyncIteration
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                # Tolerate a last event whose trailing blank line never came; a half line is dropped.
                self._dispatch()
                continue
            self._feed(chunk)
        return self._pending.popleft()

    async def next_batch(self) -> list[SSEEvent] | None:
        """Every event that one network read completed (None at the end). A provider that sends a
        burst of tokens in one write is then handled once per burst, not once per token."""
        while not self._pending:
            if self._eof:
                return None
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                self._dispatch()
                continue
            self._feed(chunk)
        events = list(self._pending)
        self._pending.clear()
        return events

    def _feed(self, chunk: bytes) -> None:
        buffer = self._buffer + chunk
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            return
        self._buffer = buffer[end + 1 :]
        for line in buffer[:end].decode("utf-8").split("\n"):
            if line.endswith("\r"):
                line = line[:-1]
            if not line:
                self._dispatch()
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            elif line.startswith("event:"):
                self._event = line[6:].strip()
            # comments (":"), id: and retry: carry nothing we use

    def _dispatch(self) -> None:
        if self._data:
            self._pending.append(SSEEvent(self._event, "\n".join(self._data)))
        self._event = ""
        self._data = []


class HTTPClient:
    """One connection pool per provider, bound to the loop of its first request."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        connect_timeout: float,
        read_timeout: float,
        secrets: Sequence[str | None] = (),
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.secrets = tuple(s for s in secrets if s)
        self._pool: UpstreamPool | None = None

    def pool(self) -> UpstreamPool:
        if self._pool is None:
            self._pool = UpstreamPool(
                self.base_url,
                headers=self._headers,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                max_connections=MAX_CONNECTIONS,
            )
        return self._pool

    def post(self, path: str, payload: Mapping[str, Any], *, stream: bool = True) -> UpstreamCall:
        """`async with http.post(...) as response`: a 2xx response; anything else, and every transport
        failure or unreadable payload inside the block, is raised as the matching LLMError."""
        headers = _STREAM_HEADERS if stream else _JSON_HEADERS
        return UpstreamCall(self, path, encode_json(payload), headers)

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        async with self.boundary():
            response = await self.pool().request("GET", path, params=params)
            async with response:
                if response.status >= 300:
                    raise await self.error_from_response(response)
                return json.loads(await response.read())

    async def error_from_response(self, response: UpstreamResponse) -> LLMError:
        body = await response.read_at_most(MAX_ERROR_BODY)
        return error_from_status(self.provider, response.status, response.headers, body, self.secrets)

    @asynccontextmanager
    async def boundary(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = self.failure(exc)
            if mapped is None:
                raise
            raise mapped from None

    def failure(self, exc: BaseException) -> LLMError | None:
        """The one place transport failures and unreadable payloads become ProviderUnavailable; None for
        what is not ours to translate (our own errors, cancellation)."""
        provider = self.provider
        if isinstance(exc, LLMError):
            return None
        if isinstance(exc, UpstreamPayloadError):
            return ProviderUnavailable(message=f"The connection to {provider} broke off mid-reply.", provider=provider)
        if isinstance(exc, TimeoutError):  # the pool's connect and read timeouts
            return ProviderUnavailable(message=f"{provider} did not answer in time.", provider=provider)
        if isinstance(exc, UpstreamConnectionError | OSError):
            log.warning("%s: connection failed: %s", provider, redact(str(exc), self.secrets))
            return ProviderUnavailable(message=f"Could not reach {provider}.", provider=provider)
        if isinstance(exc, ValueError | KeyError | TypeError | AttributeError | IndexError):
            # ValueError covers invalid JSON and invalid UTF-8 from upstream.
            log.warning("%s: malformed response (%s)", provider, type(exc).__name__)
            return ProviderUnavailable(message=f"{provider} sent a malformed response.", provider=provider)
        return None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        self._pool = None


class UpstreamCall:
    """One POST as an async context manager. A class, not @asynccontextmanager: on a relayed call the
    generator-based managers (this and the error boundary) were a tenth of the adapter's CPU."""

    __slots__ = ("_body", "_client", "_headers", "_path", "_response")

    def __init__(self, client: HTTPClient, path: str, body: bytes, headers: Mapping[str, str]) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._headers = headers
        self._response: UpstreamResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        client = self._client
        try:
            response = await client.pool().request("POST", self._path, body=self._body, headers=self._headers)
            if response.status >= 300:
                try:
                    error = await client.error_from_response(response)
                finally:
                    response.release()
                raise error
        except Exception as exc:
            mapped = client.failure(exc)
            if mapped is None:
                raise
            raise mapped from None
        self._response = response
        return response

    async def __aexit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.release()
        if exc is not None:
            mapped = self._client.failure(exc)
            if mapped is not None:
                raise mapped from None


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(body: bytes) -> tuple[str, str]:
    """(message, kind) from the error bodies of OpenAI, Anthropic, Cohere, TGI and friends."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:MAX_DETAIL_CHARS], ""
    if not isinstance(parsed, dict):
        return text.strip()[:MAX_DETAIL_CHARS], ""
    error = parsed.get("error", parsed)
    if isinstance(error, str):  # TGI: {"error": "...", "error_type": "..."}
        return error, str(parsed.get("error_type") or "")
    if not isinstance(error, dict):
        return text.strip()[:MAX_DETAIL_CHARS], ""
    message = error.get("message") or parsed.get("detail") or ""
    kind = error.get("code") or error.get("type") or ""
    return str(message), str(kind)


def _mentions_context(*texts: str) -> bool:
    return any(marker in text.lower() for text in texts for marker in _CONTEXT_MARKERS)


def error_from_status(
    provider: str, status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]
) -> LLMError:
    message, kind = _detail(body)
    message = redact(message, secrets)[:MAX_DETAIL_CHARS]
    if status in (401, 403) or kind in _AUTH_KINDS:
        # The upstream text may quote part of the key; redacted, it goes to the operator's log only.
        log.error("%s rejected the server's credentials (HTTP %d): %s", provider, status, message)
        return ProviderAuthError(provider=provider)
    if status in (400, 413, 422) and _mentions_context(message, kind):
        return ContextTooLong(message=f"The conversation is too long for the model: {message}", provider=provider)
    retry_after = parse_retry_after(headers)
    if status == 429:
        return ProviderBusy(provider=provider, retry_after=retry_after)
    if status == 408 or status >= 500:
        log.warning("%s failed with HTTP %d: %s", provider, status, message)
        return ProviderUnavailable(
            message=f"{provider} is unavailable (HTTP {status}).", provider=provider, retry_after=retry_after
        )
    return ProviderBadRequest(message=f"{provider} rejected the request: {message}", provider=provider)


def error_from_kind(provider: str, kind: str, message: str, secrets: Sequence[str]) -> LLMError:
    """Map an error reported inside a 200 stream (Anthropic `error` event, OpenAI `{"error": ...}` chunk)."""
    message = redact(message, secrets)[:MAX_DETAIL_CHARS]
    kind = kind.lower()
    if kind in _AUTH_KINDS:
        log.error("%s rejected the server's credentials mid-stream: %s", provider, message)
        return ProviderAuthError(provider=provider)
    if _mentions_context(message, kind):
        return ContextTooLong(message=f"The conversation is too long for the model: {message}", provider=provider)
    if kind in _BUSY_KINDS:
        return ProviderBusy(provider=provider)
    if kind in _BAD_REQUEST_KINDS:
        return ProviderBadRequest(message=f"{provider} rejected the request: {message}", provider=provider)
    log.warning("%s reported an error mid-stream (%s): %s", provider, kind or "unknown", message)
    return ProviderUnavailable(message=f"{provider} failed mid-reply ({kind or 'error'}).", provider=provider)


def premature_end(provider: str) -> ProviderUnavailable:
    return ProviderUnavailable(message=f"The reply from {provider} ended before it was complete.", provider=provider)
