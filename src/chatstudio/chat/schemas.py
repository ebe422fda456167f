from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from chatstudio.schemas import RequestModel, ResponseModel

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
# provider/model, e.g. openai/gpt-4o or local/smollm2-135m, or an operator-defined alias.
ModelId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[\w.:@/-]+$"),
]
SystemPrompt = Annotated[str, Field(max_length=32_000)]


class ChatParams(RequestModel):
    """Sampling parameters; the same ranges every provider accepts."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=200_000)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=100)]],
            Field(max_length=4),
        ]
        | None
    ) = None
    seed: int | None = None


class ConversationCreate(RequestModel):
    title: Title | None = None
    model: ModelId | None = None
    system_prompt: SystemPrompt | None = None
    params: ChatParams | None = None


class ConversationUpdate(RequestModel):
    title: Title | None = None
    model: ModelId | None = None
    system_prompt: SystemPrompt | None = None
    params: ChatParams | None = None
    pinned: bool | None = None
    archived: bool | None = None


class ConversationOut(ResponseModel):
    id: uuid.UUID
    title: str
    model: str | None
    system_prompt: str | None
    params: dict[str, Any]
    pinned: bool
    archived: bool
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime


class MessageOut(ResponseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    parent_id: uuid.UUID | None
    role: str
    content: str
    status: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: int | None
    time_to_first_token_ms: int | None
    finish_reason: str | None
    error_code: str | None
    created_at: datetime


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


MAX_MESSAGE_CHARS = 100_000
MessageContent = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS), AfterValidator(_not_blank)]
# Uploaded files (POST /api/v1/files) whose text, or image, goes with the message.
MAX_FILES_PER_MESSAGE = 10
FileIds = Annotated[list[uuid.UUID], Field(max_length=MAX_FILES_PER_MESSAGE)]


class SendMessageRequest(RequestModel):
    content: MessageContent
    model: ModelId | None = None
    params: ChatParams | None = None
    stream: bool | None = None
    # Answer under this message instead of the newest one (continue another branch).
    parent_id: uuid.UUID | None = None
    file_ids: FileIds = Field(default_factory=list)


class RegenerateRequest(RequestModel):
    model: ModelId | None = None
    params: ChatParams | None = None
    stream: bool | None = None


class EditMessageRequest(RequestModel):
    content: MessageContent
    model: ModelId | None = None
    params: ChatParams | None = None
    stream: bool | None = None


class TurnOut(ResponseModel):
    user_message: MessageOut | None
    assistant_message: MessageOut
