"""What both /v1 completion paths share: the body parse, the error mapping, and the record of one call
(usage ledger and idempotency key) once it ends."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from chatstudio.apikeys.service import InvalidApiKey
from chatstudio.chat.history import estimate_tokens
from chatstudio.db import utcnow
from chatstudio.deps import Caller
from chatstudio.errors import AppError, InvalidToken
from chatstudio.idempotency import Claim, IdempotencyGate
from chatstudio.llm.base import ChatRequest, Finish, LLMError, StreamEvent, TextDelta, Usage, WireChunk
from chatstudio.openai_api.wire import CompletionRequest, OpenAIError, completion, error_type, forbidden_field
from chatstudio.usage.ledger import UsageLedger, UsageRecord

logger = logging.getLogger("chatstudio.openai_api")

_MODEL_NOT_FOUND = frozenset({"unknown_model", "provider_not_configured"})


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


@dataclass
class CompletionCall:
    """One model call: what the ledger and the idempotency record need once it ends."""

    ledger: UsageLedger
    caller: Caller
    model_id: str
    request: ChatRequest
    gate: IdempotencyGate
    claim: Claim | None
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    usage: Usage | None = None
    finish: str = "stop"

    @functools.cached_property
    def completion_id(self) -> str:
        """Only the routed path writes its own chunks; a relayed reply keeps the upstream's id."""
        return f"chatcmpl-{uuid.uuid4().hex}"

    def take(self, event: StreamEvent) -> str | None:
        """The event's text, if any; usage and finish are kept."""
        if isinstance(event, WireChunk):
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        elif isinstance(event, TextDelta):
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


def parse_body(raw: bytes) -> tuple[dict[str, Any], CompletionRequest]:
    try:
        payload = orjson.loads(raw)
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
