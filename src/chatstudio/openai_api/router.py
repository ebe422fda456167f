"""`/v1/models` and `/v1/chat/completions` for OpenAI SDKs: stateless (no conversation is stored),
authenticated by an API key (scope `chat`) or a signed-in user's token, errors in OpenAI's shape.

Hot path of a streamed completion: the cached key look-up, one body parse, the provider stream, one
string escape per token, and usage appended to the in-memory ledger at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute

from chatstudio.apikeys.service import is_api_key
from chatstudio.budgets import Budgets
from chatstudio.chat.history import message_tokens
from chatstudio.db import session_scope
from chatstudio.deps import Caller, authenticate_api_key
from chatstudio.errors import Unauthorized
from chatstudio.idempotency import (
    REPLAYED_HEADER,
    SCOPE_COMPLETIONS,
    Claim,
    IdempotencyGate,
    IdempotencyKeyHeader,
    Stored,
    fingerprint,
)
from chatstudio.llm.base import LLMError, StreamEvent
from chatstudio.llm.registry import ProviderRegistry
from chatstudio.openai_api.calls import CompletionCall, as_openai_error, parse_body
from chatstudio.openai_api.wire import (
    DONE,
    ChunkWriter,
    CompletionRequest,
    OpenAIError,
    error_event,
    replay_chunks,
    to_chat_request,
)
from chatstudio.users.service import AuthService

logger = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _error_response(error: OpenAIError) -> Response:
    return Response(json.dumps(error.body()), error.status_code, headers=error.headers, media_type="application/json")


class OpenAIRoute(APIRoute):
    """Every failure of a /v1 route, our own errors included, is answered in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - rendered, and logged when unexpected
                return _error_response(as_openai_error(exc))

        return guarded


router = APIRouter(prefix="/v1", tags=["openai compatible"], route_class=OpenAIRoute)


async def v1_caller(request: Request) -> Caller:
    """An API key (cached: no query), or a signed-in user's access token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Provide an API key as `Authorization: Bearer cs-...`.")
    if is_api_key(token):
        found = await authenticate_api_key(request, token)
        return Caller(found.user, found)
    async with session_scope(request.app.state.sessionmaker) as session:
        user, _ = await AuthService(session, request.app.state.settings).authenticate_access_token(token)
    return Caller(user)


V1Caller = Annotated[Caller, Depends(v1_caller)]


@router.get("/models")
async def list_models(request: Request, caller: V1Caller) -> dict[str, Any]:
    registry: ProviderRegistry = request.app.state.registry
    return {
        "object": "list",
        "data": [
            {"id": model_id, "object": "model", "created": 0, "owned_by": info.owned_by or info.provider}
            for model_id, info in await registry.list_models()
        ],
    }


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, caller: V1Caller) -> dict[str, Any]:
    registry: ProviderRegistry = request.app.state.registry
    for listed, info in await registry.list_models():
        if listed == model_id:
            return {"id": listed, "object": "model", "created": 0, "owned_by": info.owned_by or info.provider}
    raise OpenAIError(404, f"The model {model_id!r} does not exist.", code="model_not_found", param="model")


async def _check_budget(request: Request, user: Any, chat_request: Any) -> None:
    """Only users with a budget pay a query here; everyone else's hot path stays query-free."""
    budgets: Budgets = request.app.state.budgets
    daily, monthly = budgets.limits_for(user.daily_token_budget, user.monthly_token_budget)
    if daily is None and monthly is None:
        return
    estimated = sum(message_tokens(m) for m in chat_request.messages)
    async with session_scope(request.app.state.sessionmaker) as session:
        await budgets.check(session, user.id, daily=daily, monthly=monthly, estimated_tokens=estimated)


@router.post("/chat/completions")
async def chat_completions(request: Request, caller: V1Caller, idempotency_key: IdempotencyKeyHeader = None) -> Any:
    """OpenAI's Chat Completions request and response, streamed (`stream: true`, with
    `stream_options.include_usage`) or not, routed by `model` (`provider/model` or an alias, as listed
    by `GET /v1/models`). Fields that name a server or a credential (`base_url`, `api_key`, ...) are
    refused with 422. Nothing is stored but the usage record."""
    payload, body = parse_body(await request.body())
    registry: ProviderRegistry = request.app.state.registry
    model_id = registry.canonical(body.model)
    registry.resolve(model_id)  # an unknown model is a 404 before anything else happens
    chat_request = to_chat_request(body, model_id)
    await _check_budget(request, caller.user, chat_request)
    gate: IdempotencyGate = request.app.state.idempotency
    claim: Claim | None = None
    if idempotency_key is not None:
        outcome = await gate.claim(
            caller.user.id, SCOPE_COMPLETIONS, idempotency_key, fingerprint(request.url.path, payload)
        )
        if isinstance(outcome, Stored):
            return _replay(outcome, body)
        claim = outcome
    call = CompletionCall(request.app.state.usage, caller, model_id, chat_request, gate, claim)
    events = registry.stream(model_id, chat_request)
    try:
        # The first event decides the status: failures before it are proper HTTP errors.
        first: StreamEvent | None = await anext(events, None)
        if not body.stream:
            event = first
            while event is not None:
                call.take(event)
                event = await anext(events, None)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await events.aclose()
            await call.end("cancelled" if isinstance(exc, asyncio.CancelledError) else "failed")
        raise
    if body.stream:
        chunks = coalesce(_stream(call, events, first, body))
        return StreamingResponse(chunks, media_type="text/event-stream", headers=_SSE_HEADERS)
    content = json.dumps(call.result(body.model))
    await call.end("completed", content)
    return Response(content, media_type="application/json")


async def _stream(
    call: CompletionCall, events: AsyncGenerator[StreamEvent, None], first: StreamEvent | None, body: CompletionRequest
) -> AsyncIterator[bytes]:
    writer = ChunkWriter(call.completion_id, call.created, body.model)
    status, stored = "cancelled", None
    try:
        yield writer.role()
        event = first
        while event is not None:
            text = call.take(event)
            if text is not None:
                yield writer.delta(text)
            event = await anext(events, None)
        yield writer.finish(call.finish)
        if body.include_usage:
            yield writer.usage(call.final_usage())
        status, stored = "completed", json.dumps(call.result(body.model))
        yield DONE
    except LLMError as exc:
        status = "failed"
        yield error_event(as_openai_error(exc))
    finally:
        # Shielded: a client that leaves cancels the response, yet the upstream call must still be
        # closed and the call charged.
        with anyio.CancelScope(shield=True):
            await events.aclose()
            await call.end(status, stored)


async def coalesce(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Everything `chunks` produced since the last write, joined into one write.

    A provider often delivers many tokens in one network read; writing each through the middleware
    stack and the socket separately costs more than producing it. A pump task reads ahead while the
    response writes, so a burst becomes one write and a lone token still goes out at once.
    """
    buffer: list[bytes] = []
    ready = asyncio.Event()
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for chunk in chunks:
                buffer.append(chunk)
                ready.set()
        finally:
            finished = True
            ready.set()

    task = asyncio.create_task(pump(), name="v1-stream")
    try:
        while not finished or buffer:
            await ready.wait()
            ready.clear()
            if buffer:
                joined = b"".join(buffer)
                buffer.clear()
                yield joined
        await task  # its failure, if any, is the response's
    finally:
        if not task.done():
            task.cancel()  # the client left: stop reading the provider (the pump's own cleanup runs)
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])


def _replay(stored: Stored, body: CompletionRequest) -> Response:
    headers = {REPLAYED_HEADER: "true"}
    if not body.stream:
        return Response(stored.body, stored.status, headers=headers, media_type="application/json")
    content = replay_chunks(cast(dict[str, Any], json.loads(stored.body)), body.include_usage)
    return Response(content, headers={**headers, **_SSE_HEADERS}, media_type="text/event-stream")


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def not_found(path: str) -> Response:
    raise OpenAIError(404, f"Unknown endpoint /v1/{path}; this server offers /v1/models and /v1/chat/completions.")
