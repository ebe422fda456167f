"""Helpers the provider tests share (a module, not conftest, so tests can import them by name)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from chatstudio.llm.base import ChatMessage, ChatRequest, LLMError, StreamEvent, TextDelta

KEY = "sk-test-5EcR3t-0123456789abcdef"
PROMPT = "hello big world"


def chat(model: str, text: str = PROMPT, *, system: str | None = None, **options: Any) -> ChatRequest:
    messages = [ChatMessage("system", system)] if system else []
    messages.append(ChatMessage("user", text))
    return ChatRequest(model=model, messages=messages, **options)


async def drain(events: AsyncIterator[StreamEvent]) -> tuple[list[StreamEvent], LLMError | None]:
    """Every event until the stream ends or fails, and the failure if any."""
    seen: list[StreamEvent] = []
    try:
        async for event in events:
            seen.append(event)
    except LLMError as error:
        return seen, error
    return seen, None


def text_of(events: list[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))
