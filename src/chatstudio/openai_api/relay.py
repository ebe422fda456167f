"""The fast path of `POST /v1/chat/completions`: plain ASGI in front of the framework.

A completion relayed to an OpenAI-format provider is the request the overhead benchmarks measure
(issue 4: at least half the direct upstream's throughput). Per request the framework's routing,
dependency injection and response classes cost more than the call itself, so the common case is
served here: a cached API key, no Idempotency-Key, no browser Origin, no token budget to check, and a
model whose providers all speak OpenAI's format. The upstream's bytes are forwarded as they arrive
(see llm.openai_relay). Everything else falls through to the router in openai_api.router, with the
body handed on when it was already read, so both paths give the same answers; the edge middleware
(request id, metrics, access log, security headers, rate limit) wraps both alike.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstudio.apikeys.auth import ApiKeyAuthenticator, AuthenticatedKey
from chatstudio.apikeys.service import scope_allows
from chatstudio.budgets import Budgets
from chatstudio.deps import Caller
from chatstudio.llm.base import LLMError, StreamEvent, WireChunk
from chatstudio.llm.registry import ProviderRegistry
from chatstudio.observability.middleware import RouteLabel
from chatstudio.openai_api.calls import CompletionCall, as_openai_error, parse_body
from chatstudio.openai_api.wire import OpenAIError, error_event, to_chat_request

log = logging.getLogger("chatstudio.openai_api")

PATH = "/v1/chat/completions"
# Larger bodies are refused here before they are read whole (the longest context windows hold ~4 MB of text).
MAX_BODY = 8 * 1024 * 1024
_SSE_START = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


_ROUTE = RouteLabel(PATH)


class CompletionsFastPath:
    """Serves the common case of PATH itself and hands everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        found = self._cached_key(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = _ROUTE
        body = await _read_body(receive)
        if body is None:
            await _send_json(send, 413, OpenAIError(413, "The request body is too large.", code="body_too_large"))
            return
        state = scope["app"].state
        try:
            prepared = _prepare(state, found, body)
        except (OpenAIError, LLMError) as exc:
            error = as_openai_error(exc)
            await _send_json(send, error.status_code, error)
            return
        if prepared is None:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            await _serve(scope, receive, send, *prepared)
        except Exception:
            log.exception("unhandled error in %s", PATH)
            raise

    @staticmethod
    def _cached_key(scope: Scope) -> AuthenticatedKey | None:
        """The caller's key when it is cached and nothing in the headers needs the full path."""
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, raw = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return None
                token = raw.strip()
            elif name in (b"idempotency-key", b"origin"):
                return None
        if not token:
            return None
        keys: ApiKeyAuthenticator | None = getattr(scope["app"].state, "api_keys", None)
        found = keys.cached(token) if keys is not None else None
        if found is None or not scope_allows(found.key.scopes, "POST", PATH):
            return None
        return found


_Prepared = tuple[CompletionCall, AsyncGenerator[StreamEvent, None], bool, bool, bytes, bytes]


def _prepare(state: Any, found: AuthenticatedKey, body: bytes) -> _Prepared | None:
    """The call and its (not yet started) stream; None when this request needs the full path."""
    _, request = parse_body(body)
    registry: ProviderRegistry = state.registry
    model_id = registry.canonical(request.model)
    _, upstream_model = registry.resolve(model_id)  # an unknown model is a 404 before anything else happens
    budgets: Budgets = state.budgets
    user = found.user
    if budgets.limits_for(user.daily_token_budget, user.monthly_token_budget) != (None, None):
        return None  # a budget to check costs a query: the full path does it
    if not registry.relays(model_id):
        return None
    stream = bool(request.stream)
    # ChatRequest.model is the provider's own name for it, which the registry would otherwise copy in.
    chat_request = to_chat_request(request, upstream_model, "sse" if stream else "json")
    call = CompletionCall(state.usage, Caller(user, found), model_id, chat_request, state.idempotency, None)
    # The upstream names its model as it knows it; the client is answered with the name it asked for.
    renamed = (_model_field(upstream_model), _model_field(request.model))
    events = registry.stream(model_id, chat_request)
    return call, events, stream, request.include_usage, *renamed


@functools.lru_cache(maxsize=256)
def _model_field(model: str) -> bytes:
    return b'"model":' + json.dumps(model).encode()


async def _serve(
    scope: Scope,
    receive: Receive,
    send: Send,
    call: CompletionCall,
    events: AsyncGenerator[StreamEvent, None],
    stream: bool,
    include_usage: bool,
    upstream_model: bytes,
    client_model: bytes,
) -> None:
    try:
        # The first event decides the status: failures before it are proper HTTP errors.
        first = await anext(events, None)
    except BaseException as exc:
        await events.aclose()
        await call.end("cancelled" if isinstance(exc, asyncio.CancelledError) else "failed")
        if isinstance(exc, LLMError):
            error = as_openai_error(exc)
            await _send_json(send, error.status_code, error)
            return
        raise
    rename = upstream_model != client_model
    if not stream:
        await _answer_json(send, call, events, first, (upstream_model, client_model) if rename else None)
        return
    await send({"type": "http.response.start", "status": 200, "headers": list(_SSE_START)})
    status = "cancelled"
    finished = left = False
    task = asyncio.current_task()

    async def watch() -> None:
        # uvicorn's send() ignores a client that left; only receive() tells, so the upstream read stops.
        nonlocal left
        message = await receive()
        if message["type"] == "http.disconnect" and not finished and task is not None:
            left = True
            task.cancel()

    watcher: asyncio.Task[None] | None = None
    try:
        event = first
        while event is not None:
            call.take(event)
            if isinstance(event, WireChunk) and not finished:
                data = event.data
                if event.usage is not None and not include_usage:
                    data = data[: event.usage[0]] + data[event.usage[1] :]
                if rename:
                    # split+join: one scan of the slice; replace() scans it twice (count, then copy).
                    data = client_model.join(data.split(upstream_model))
                # The chunk with the upstream's end marker also ends the response: one write fewer.
                finished = event.last
                await send({"type": "http.response.body", "body": data, "more_body": not finished})
                if watcher is None and not finished:  # only a reply still coming needs watching
                    watcher = asyncio.get_running_loop().create_task(watch())
            event = await anext(events, None)
        status = "completed"
        if not finished:
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except LLMError as exc:
        status = "failed"
        if not finished:
            finished = True
            await send({"type": "http.response.body", "body": error_event(as_openai_error(exc)), "more_body": False})
    except asyncio.CancelledError:
        if left and task is not None and task.uncancel() == 0:
            return  # the client left: charged below as cancelled, nothing more to send
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
        await events.aclose()
        await call.end(status)


async def _answer_json(
    send: Send,
    call: CompletionCall,
    events: AsyncGenerator[StreamEvent, None],
    first: StreamEvent | None,
    rename: tuple[bytes, bytes] | None,
) -> None:
    body = b""
    status = "failed"
    try:
        event = first
        while event is not None:
            if isinstance(event, WireChunk):
                body = event.data
            call.take(event)
            event = await anext(events, None)
        status = "completed"
    except LLMError as exc:
        error = as_openai_error(exc)
        await _send_json(send, error.status_code, error)
        return
    finally:
        await events.aclose()
        await call.end(status)
    if rename is not None:
        body = body.replace(*rename, 1)
    await _send_bytes(send, 200, body)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client left; what came is parsed and answered into the void
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the already-read body to the full path, then passes on the real one's
    messages (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, error: OpenAIError) -> None:
    await _send_bytes(send, status, json.dumps(error.body()).encode(), error.headers)


async def _send_bytes(send: Send, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
