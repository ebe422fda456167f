from __future__ import annotations

import uuid
from datetime import datetime

from chatstudio.schemas import ResponseModel


class FileOut(ResponseModel):
    id: uuid.UUID
    filename: str
    extension: str
    kind: str
    media_type: str
    size_bytes: int
    sha256: str
    # Characters of text extracted for chat; null for images, 0 when a document holds no text (a scan).
    text_chars: int | None
    width: int | None
    height: int | None
    created_at: datetime
