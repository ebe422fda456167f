from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from chatstudio.schemas import ResponseModel


class Sort(StrEnum):
    RECENT = "recent"  # newest first
    RELEVANCE = "relevance"  # best match first among the newest matches; ties newest first


class SearchHitOut(ResponseModel):
    """One hit. `snippet` is plain text (render it as text, never as HTML); `highlights` are the
    matched words in it as [start, end) offsets counted in Unicode code points."""

    conversation_id: uuid.UUID
    conversation_title: str
    message_id: Annotated[uuid.UUID | None, Field(description="null when the conversation's title matched")]
    role: str | None
    created_at: datetime
    snippet: str
    highlights: list[tuple[int, int]]
