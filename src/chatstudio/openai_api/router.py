"""`/v1/models` and `/v1/chat/completions` for OpenAI SDKs: stateless (no conversation is stored),
authenticated by an API key (scope `chat`) or a signed-in user's token, errors in OpenAI's shape.

Hot path of a streamed completion: the cached key look-up, one body parse, the provider stream, one
string escape per token, and usage appended to the in-memory ledger at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from chatstudio.apikeys.service import InvalidApiKey, is_api_key
from chatstudio.budgets import Budgets
from chatstudio.chat.history import estimate_tokens, message_tokens
from chatstudio.db import session_scope, utcnow
from chatstudio.deps import Caller, authenticate_api_key
from chatstudio.errors import AppError, InvalidToken, Unauthorized
from chatstudio.idempotency import (
    REPLAYED_HEADER,
    SCOPE_COMPLETIONS,
    Claim,
    IdempotencyGate,
    IdempotencyKeyHeader,
    Stored,
    fingerprint,
)
from chatstudio.llm.base import ChatRequest, Finish, LLMError, StreamEvent, TextDelta, Usage
from chatstudio.llm.registry import ProviderRegistry
from chatstudio.openai_api.wire import (
    DONE,
    ChunkWriter,
    CompletionRequest,
    OpenAIError,
    completion,
    error_event,
    error_type,
    forbidden_field,
    replay_chunks,
    to_chat_request,
)
from chatstudio.usage.ledger import UsageLedger, UsageRecord
from chatstudio.users.service import AuthService

logger = logging.getLogger(__name__)

_MODEL_NOT_FOUND = frozenset({"unknown_model", "provider_not_configured"})
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def as_openai_error(exc: Exception) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, LLMError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        if exc.code in _MODEL_NOT_FOUND:
            return OpenAIError(404, exc.message, code="model_not_found", param="model")
        status = 400 if exc.code == "context_length_exceeded" or exc.status_code == 422 else exc.status_code
        return OpenAIError(status, exc.message, type_=error_type(status), code=exc.code, headers=headers)
    if isinstance(exc, AppError):
        code = "invalid_api_key" if isinstance(exc, InvalidApiKey | InvalidToken) else exc.code
        return OpenAIError(
            exc.status_code, exc.message, type_=error_type(exc.status_code), code=code, headers=exc.headers
        )
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "header", "query")]
        message = f"Invalid value for {'.'.join(loc) or 'the request'}: {first.get('msg', 'invalid')}."
        return OpenAIError(400, message, code="invalid_value", param=".".join(loc) or None)
    if isinstance(exc, HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "The request could not be processed."
        return OpenAIError(exc.status_code, detail, type_=error_type(exc.status_code), headers=exc.headers)
    logger.exception("unhandled error in /v1")
    return OpenAIError(500, "The server had an error while processing your request.", type_="server_error")


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


@dataclass
class _Call:
    """One model call: what the ledger and the idempotency record need once it ends."""

    ledger: UsageLedger
    caller: Caller
    model_id: str
    request: ChatRequest
    gate: IdempotencyGate
    claim: Claim | None
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    usage: Usage | None = None
    finish: str = "stop"

    def take(self, event: StreamEvent) -> str | None:
        """The event's text, if any; usage and finish are kept."""
        if isinstance(event, TextDelta):
            if event.text:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self.parts.append(event.text)
                return event.text
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finish):
            self.finish = event.reason
        return None

    def final_usage(self) -> Usage:
        if self.usage is not None:
            return self.usage
        prompt = sum(estimate_tokens(m.content) for m in self.request.messages)
        return Usage(prompt, estimate_tokens("".join(self.parts)) if self.parts else 0)

    def result(self, model: str) -> dict[str, Any]:
        return completion(self.completion_id, self.created, model, "".join(self.parts), self.finish, self.final_usage())

    async def end(self, status: str, stored: str | None = None) -> None:
        """Charges the call to the ledger (memory only) and stores or releases the idempotency key."""
        now = time.perf_counter()
        usage = self.final_usage()
        api_key = self.caller.api_key
        self.ledger.record(
            UsageRecord(
                user_id=self.caller.user.id,
                api_key_id=api_key.key.id if api_key else None,
                source="api",
                model=self.model_id,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                status=status,
                latency_ms=int((now - self.started) * 1000),
                ttft_ms=int((self.first_token_at - self.started) * 1000) if self.first_token_at else None,
                at=utcnow(),
            )
        )
        if self.claim is not None:
            if stored is not None:
                await self.gate.complete(self.claim, 200, stored)
            else:
                await self.gate.release(self.claim)


def _parse(raw: bytes) -> tuple[dict[str, Any], CompletionRequest]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise OpenAIError(400, "The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "The body must be a JSON object.", code="invalid_json")
    forbidden = forbidden_field(payload)
    if forbidden is not None:
        raise OpenAIError(
            422,
            f"`{forbidden}` is not accepted: this server only connects to the providers its operator configured.",
            code="forbidden_parameter",
            param=forbidden,
        )
    try:
        return payload, CompletionRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise OpenAIError(
            400, f"Invalid value for {param}: {first['msg']}.", code="invalid_value", param=param
        ) from None


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
    payload, body = _parse(await request.body())
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
    call = _Call(request.app.state.usage, caller, model_id, chat_request, gate, claim)
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
    call: _Call, events: AsyncGenerator[StreamEvent, None], first: StreamEvent | None, body: CompletionRequest
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
