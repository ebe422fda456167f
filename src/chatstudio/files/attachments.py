"""Files in a chat turn: the owner's files only, their text put before the message, images as image parts.

Used by chat.turns while it prepares a turn, inside that turn's one short transaction: a file that is
not the user's fails the turn with 404 `file_not_found` before anything is stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from chatstudio.chat.history import StoredTurn
from chatstudio.files.errors import FileNotFound, ModelNotVisionCapable
from chatstudio.files.models import FileKind, StoredFile
from chatstudio.files.repository import FileRepository
from chatstudio.files.storage import FileStore
from chatstudio.llm.base import ChatMessage, ImagePart, supports_vision

# What an image costs in the context, roughly (a ~1 MP image; OpenAI and Anthropic both bill about this).
IMAGE_TOKENS = 1600


@dataclasses.dataclass(frozen=True, slots=True)
class Attached:
    """What a turn carries: the files (in order), their text to put before the message, their images."""

    files: tuple[StoredFile, ...] = ()
    text: str = ""
    images: tuple[ImagePart, ...] = ()

    def before(self, content: str) -> str:
        return f"{self.text}\n\n{content}" if self.text else content

    def window(self, context_window: int) -> int:
        """The context left for text once the images have taken their share."""
        return context_window - IMAGE_TOKENS * len(self.images)

    def with_images(self, prompt: list[ChatMessage]) -> list[ChatMessage]:
        """The prompt with the images on its last (the new user) message."""
        if not self.images:
            return prompt
        last = prompt[-1]
        return [*prompt[:-1], ChatMessage(last.role, last.content, self.images)]


def _quote(name: str) -> str:
    return name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def render(stored: StoredFile, text: str) -> str:
    return f'<file name="{_quote(stored.filename)}">\n{text}\n</file>'


class Attachments:
    def __init__(self, session: AsyncSession, store: FileStore | None) -> None:
        self.files = FileRepository(session)
        self.store = store

    async def for_turn(
        self,
        user_id: uuid.UUID,
        model: str,
        path: Sequence[StoredTurn],
        file_ids: Sequence[uuid.UUID],
        *,
        answering: uuid.UUID | None,
    ) -> tuple[Attached, list[StoredTurn]]:
        """The files of a new message (`file_ids`) or of the message being answered again (`answering`),
        and the history with earlier messages' files put back. Without a store (a caller that does not
        deal in files) there is nothing to attach."""
        if self.store is None:
            if file_ids:
                raise RuntimeError("file_ids were given without a FileStore to read them from")
            return Attached(), list(path)
        if answering is not None:
            attached = await self.for_message(user_id, answering, model=model)
        else:
            attached = await self.load(user_id, file_ids, model=model)
        return attached, await self.history(user_id, path)

    async def load(self, user_id: uuid.UUID, file_ids: Sequence[uuid.UUID], *, model: str) -> Attached:
        """The user's own files by id (duplicates once); 404 when any is missing or someone else's,
        422 when there are images and the model cannot see."""
        wanted = list(dict.fromkeys(file_ids))
        if not wanted:
            return Attached()
        found = {stored.id: stored for stored in await self.files.get_many_owned(wanted, user_id)}
        missing = [file_id for file_id in wanted if file_id not in found]
        if missing:
            raise FileNotFound(f"The file {missing[0]} was not found.")
        ordered = [found[file_id] for file_id in wanted]
        if any(stored.kind == FileKind.IMAGE for stored in ordered) and not supports_vision(model):
            raise ModelNotVisionCapable(f"The model {model} does not accept images; choose a vision model.")
        return await self._read(ordered, with_images=True)

    async def for_message(self, user_id: uuid.UUID, message_id: uuid.UUID, *, model: str) -> Attached:
        """The files an existing message carried (to answer it again)."""
        linked = [stored for _, stored in await self.files.linked_to([message_id], user_id)]
        return await self._read(linked, with_images=supports_vision(model))

    async def history(self, user_id: uuid.UUID, path: Sequence[StoredTurn]) -> list[StoredTurn]:
        """Earlier user messages with their files' text put back in front, so follow-up questions can be
        about the file; images of earlier turns are not sent again."""
        asked = [turn.id for turn in path if turn.role == "user" and turn.has_files]
        by_message: dict[uuid.UUID, list[StoredFile]] = {}
        for message_id, stored in await self.files.linked_to(asked, user_id):
            by_message.setdefault(message_id, []).append(stored)
        expanded: list[StoredTurn] = []
        for turn in path:
            files = by_message.get(turn.id)
            if files:
                attached = await self._read(files, with_images=False)
                turn = dataclasses.replace(turn, content=attached.before(turn.content))
            expanded.append(turn)
        return expanded

    async def link(self, message_id: uuid.UUID, attached: Attached) -> None:
        """Record which files the new user message carried."""
        if attached.files:
            await self.files.link(message_id, [stored.id for stored in attached.files])

    async def _read(self, files: Sequence[StoredFile], *, with_images: bool) -> Attached:
        store = self.store
        if store is None:
            raise RuntimeError("attachments are read from a FileStore")
        blocks: list[str] = []
        images: list[ImagePart] = []
        for stored in files:
            if stored.kind == FileKind.IMAGE:
                if with_images:
                    try:
                        data = await asyncio.to_thread(store.read_bytes, stored.id)
                    except FileNotFoundError:
                        raise FileNotFound(f"The content of file {stored.id} is no longer available.") from None
                    images.append(ImagePart(data, stored.media_type))
                continue
            text = await asyncio.to_thread(store.read_text, stored.id)
            blocks.append(render(stored, text))
        return Attached(tuple(files), "\n\n".join(blocks), tuple(images))
