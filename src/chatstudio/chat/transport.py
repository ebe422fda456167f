"""How turn events look on the wire; SSE and WebSocket share one shape and only frame it differently."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from chatstudio.chat.schemas import MessageOut
from chatstudio.chat.turns import ChatEvent, TurnDelta, TurnDone, TurnFailed, TurnStarted


def _message(message: Any) -> dict[str, Any]:
    return MessageOut.model_validate(message).model_dump(mode="json")


def event_payload(event: ChatEvent) -> tuple[str, dict[str, Any]]:
    if isinstance(event, TurnDelta):
        return "delta", {"text": event.text}
    if isinstance(event, TurnStarted):
        return "start", {
            "conversation_id": str(event.assistant_message.conversation_id),
            "user_message_id": str(event.user_message.id) if event.user_message else None,
            "assistant_message_id": str(event.assistant_message.id),
            "model": event.assistant_message.model,
        }
    if isinstance(event, TurnDone):
        message = event.assistant_message
        return "done", {
            "finish_reason": message.finish_reason,
            "usage": {"input_tokens": message.input_tokens, "output_tokens": message.output_tokens},
            "message": _message(message),
        }
    return "error", {
        "code": event.code,
        "message": event.message,
        "message_id": str(event.assistant_message.id) if event.assistant_message else None,
        "retry_after": event.retry_after,
    }


def sse_frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def sse_stream(batches: AsyncIterator[list[ChatEvent]]) -> AsyncIterator[bytes]:
    """One write per batch of waiting events: each write crosses the middleware and the socket."""
    async for batch in batches:
        yield b"".join(sse_frame(*event_payload(event)) for event in batch)


def is_failure(event: ChatEvent) -> bool:
    return isinstance(event, TurnFailed)
