"""Chat turns: store the question, stream the answer, store the answer exactly once.

    provider.stream() --StreamEvent--> TurnManager._run() --ChatEvent--> transport (SSE | WebSocket)

A turn runs in its own task, detached from the request that started it: a client that goes away
does not stop the generation, which finishes and is stored. Only `cancel()` (the user's stop
button) or shutdown end it early, and even then what was generated is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatstudio.chat.history import build_prompt, estimate_tokens, message_tokens, title_from
from chatstudio.chat.models import Message, MessageRole, MessageStatus
from chatstudio.chat.repository import ConversationRepository, MessageRepository, finish_streaming
from chatstudio.chat.schemas import ChatParams
from chatstudio.chat.service import DEFAULT_TITLE, ConversationNotFound
from chatstudio.db import autocommit_connection, session_scope, utcnow, uuid7
from chatstudio.errors import NotFound, ServiceUnavailable, Unauthorized
from chatstudio.files.attachments import Attachments
from chatstudio.files.errors import AttachmentsTooLong
from chatstudio.files.storage import FileStore
from chatstudio.llm.base import ChatRequest, ContextTooLong, Finish, LLMError, TextDelta, Usage
from chatstudio.llm.registry import ProviderRegistry
from chatstudio.users.models import User

if TYPE_CHECKING:
    from chatstudio.budgets import Budgets
    from chatstudio.usage.ledger import UsageLedger

logger = logging.getLogger(__name__)


class MessageNotFound(NotFound):
    code = "message_not_found"
    default_message = "The message was not found."


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"
    default_message = "The server is restarting; try again in a moment."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


# events seen by transports


@dataclass(frozen=True, slots=True)
class TurnStarted:
    user_message: Message | None
    assistant_message: Message


@dataclass(frozen=True, slots=True)
class TurnDelta:
    text: str


@dataclass(frozen=True, slots=True)
class TurnDone:
    assistant_message: Message


@dataclass(frozen=True, slots=True)
class TurnFailed:
    code: str
    message: str
    status_code: int
    assistant_message: Message | None = None
    retry_after: float | None = None


ChatEvent = TurnStarted | TurnDelta | TurnDone | TurnFailed


@dataclass
class PreparedTurn:
    user_message: Message | None
    assistant_message: Message
    model_id: str
    request: ChatRequest


_END = object()


@dataclass(eq=False)
class TurnHandle:
    """One running turn. Events are queued for the transport that started it, until it detaches."""

    prepared: PreparedTurn
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    detached: bool = False
    stop_status: MessageStatus | None = None
    task: asyncio.Task[None] | None = None
    generation: asyncio.Task[None] | None = None

    @property
    def id(self) -> uuid.UUID:
        return self.prepared.assistant_message.id

    def emit(self, event: ChatEvent) -> None:
        if not self.detached:
            self.queue.put_nowait(event)

    async def events(self) -> AsyncIterator[ChatEvent]:
        """The turn's events in order, ending with TurnDone or TurnFailed."""
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[ChatEvent]]:
        """The same events, each time all that are waiting: a transport writes them at once."""
        try:
            while True:
                item = await self.queue.get()
                batch: list[ChatEvent] = []
                while item is not _END:
                    batch.append(item)
                    try:
                        item = self.queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                if batch:
                    yield batch
                if item is _END:
                    return
        finally:
            # Whatever ends the reading (client gone, transport error), the turn goes on without it.
            self.detached = True


class TurnManager:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        registry: ProviderRegistry,
        default_model: str,
        usage: UsageLedger | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.registry = registry
        self.default_model = default_model
        self.usage = usage
        self.budgets = budgets
        self.running: dict[uuid.UUID, TurnHandle] = {}
        self.draining = False

    # before the first byte

    async def start(
        self,
        *,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        content: str | None,
        model: str | None = None,
        params: ChatParams | None = None,
        parent_id: uuid.UUID | None = None,
        regenerate_from: uuid.UUID | None = None,
        edit_of: uuid.UUID | None = None,
        file_ids: Sequence[uuid.UUID] = (),
        files: FileStore | None = None,
        verified_user: User | None = None,
    ) -> TurnHandle:
        """Checks and stores, in one short transaction, then starts generating in the background.

        `content` makes a new user message under `parent_id` (default: the newest message);
        `regenerate_from` instead answers an existing message again (a sibling reply);
        `edit_of` places the new user message beside that one (same parent), branching the tree.
        `file_ids` are the user's uploads that go with the new message, read from `files`; given
        `files`, earlier messages' uploads are sent again too. `verified_user` is the account as this
        request already read it from the database (active, signed in); without it, it is read again.
        """
        if self.draining:
            raise ShuttingDown()
        async with session_scope(self.sessionmaker) as session:
            prepared = await self._prepare(
                session,
                user_id,
                conversation_id,
                content,
                model,
                params,
                parent_id,
                regenerate_from,
                edit_of,
                Attachments(session, files),
                file_ids,
                verified_user,
            )
        handle = TurnHandle(prepared)
        handle.emit(TurnStarted(prepared.user_message, prepared.assistant_message))
        self.running[handle.id] = handle
        handle.task = asyncio.create_task(self._run(handle), name=f"turn-{handle.id}")
        return handle

    async def _prepare(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        content: str | None,
        model: str | None,
        params: ChatParams | None,
        parent_id: uuid.UUID | None,
        regenerate_from: uuid.UUID | None,
        edit_of: uuid.UUID | None,
        attachments: Attachments,
        file_ids: Sequence[uuid.UUID],
        verified_user: User | None,
    ) -> PreparedTurn:
        conversations = ConversationRepository(session)
        messages = MessageRepository(session)
        # A socket authenticated before its account was disabled must not start another turn.
        owner = verified_user if verified_user is not None and verified_user.id == user_id else None
        owner = owner or await session.get(User, user_id)
        if owner is None or not owner.is_active:
            raise Unauthorized("The account is disabled.")
        conversation = await conversations.for_turn(conversation_id, user_id)
        if conversation is None:
            raise ConversationNotFound()
        model_id = self.registry.canonical(model or conversation.model or self.default_model)
        self.registry.resolve(model_id)  # unknown model or unconfigured provider: 422, nothing stored
        merged = {**conversation.params, **(params.model_dump(exclude_none=True) if params else {})}
        history = await messages.branch_owned(conversation_id, user_id)

        if regenerate_from is not None:
            target = history.get(regenerate_from)
            if target is None:
                raise MessageNotFound()
            # Regenerating a reply answers its question again; "regenerating" a question answers it.
            question_id = target.parent_id if target.role == MessageRole.ASSISTANT else target.id
            question = history.get(question_id) if question_id else None
            if question is None or question.role != MessageRole.USER:
                raise MessageNotFound("There is no user message to answer.")
            path = history.path_to(question.parent_id)
            new_text = question.content
            user_message = None
            answer_parent = question.id
        else:
            assert content is not None
            if edit_of is not None:
                edited = history.get(edit_of)
                if edited is None or edited.role != MessageRole.USER:
                    raise MessageNotFound("There is no such user message to edit.")
                leaf = edited.parent_id
            elif parent_id is not None:
                if history.get(parent_id) is None:
                    raise MessageNotFound("The parent message was not found.")
                leaf = parent_id
            else:
                leaf = history.newest_id
            path = history.path_to(leaf)
            new_text = content

        # Files: the user's own only (404 otherwise), images only for a vision model (422), all before storing.
        attached, path = await attachments.for_turn(
            user_id, model_id, path, file_ids, answering=answer_parent if regenerate_from is not None else None
        )
        try:
            prompt = build_prompt(
                system_prompt=conversation.system_prompt,
                history=path,
                new_message=attached.before(new_text),
                context_window=attached.window(self.registry.context_window(model_id)),
                max_tokens=merged.get("max_tokens"),
            )
        except ContextTooLong as exc:
            if attached.files:
                raise AttachmentsTooLong(f"The attached files are too long for {model_id}. {exc.message}") from None
            raise
        prompt = attached.with_images(prompt)
        if self.budgets is not None:  # before anything is stored or any provider is called
            await self.budgets.check(
                session,
                user_id,
                daily=owner.daily_token_budget,
                monthly=owner.monthly_token_budget,
                estimated_tokens=sum(message_tokens(m) for m in prompt),
            )
        # Ids are made here, so both rows go to the database in one statement.
        new_rows: list[Message] = []
        new_title: str | None = None
        if regenerate_from is None:
            user_message = Message(
                id=uuid7(),
                conversation_id=conversation_id,
                user_id=user_id,
                parent_id=leaf,
                role=MessageRole.USER,
                content=new_text,
                status=MessageStatus.COMPLETED,
            )
            new_rows.append(user_message)
            answer_parent = user_message.id
            if conversation.title == DEFAULT_TITLE and not path:
                new_title = title_from(new_text)
        assistant = Message(
            id=uuid7(),
            conversation_id=conversation_id,
            user_id=user_id,
            parent_id=answer_parent,
            role=MessageRole.ASSISTANT,
            content="",
            status=MessageStatus.STREAMING,
            model=model_id,
        )
        await messages.insert_new([*new_rows, assistant])
        if user_message is not None:
            await attachments.link(user_message.id, attached)
        await conversations.touch(conversation_id, user_id, utcnow(), new_title)
        request = ChatRequest(
            model=model_id,
            messages=prompt,
            temperature=merged.get("temperature"),
            top_p=merged.get("top_p"),
            max_tokens=merged.get("max_tokens"),
            stop=merged.get("stop"),
            seed=merged.get("seed"),
            presence_penalty=merged.get("presence_penalty"),
            frequency_penalty=merged.get("frequency_penalty"),
        )
        return PreparedTurn(user_message, assistant, model_id, request)

    async def start_edit(
        self,
        *,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        content: str,
        model: str | None = None,
        params: ChatParams | None = None,
        files: FileStore | None = None,
    ) -> TurnHandle:
        return await self.start(
            user_id=user_id,
            conversation_id=conversation_id,
            content=content,
            model=model,
            params=params,
            edit_of=message_id,
            files=files,
        )

    # while streaming

    async def _run(self, handle: TurnHandle) -> None:
        prepared = handle.prepared
        parts: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        error: LLMError | None = None
        started = time.monotonic()
        first_token_at: float | None = None

        async def generate() -> None:
            nonlocal usage, finish, first_token_at
            async for event in self.registry.stream(prepared.model_id, prepared.request):
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                    parts.append(event.text)
                    handle.emit(TurnDelta(event.text))
                elif isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Finish):
                    finish = event.reason

        status = MessageStatus.COMPLETED
        handle.generation = asyncio.create_task(generate())
        try:
            await handle.generation
        except asyncio.CancelledError:
            # Only cancel() and shutdown cancel the generation; this task itself is never cancelled
            # while it runs, so the final write below always happens.
            status = handle.stop_status or MessageStatus.CANCELLED
        except LLMError as exc:
            status, error = MessageStatus.FAILED, exc
        except Exception:
            logger.exception("turn %s failed unexpectedly", handle.id)
            status = MessageStatus.FAILED
            error = LLMError(message="The reply could not be generated.")
        text = "".join(parts)
        if usage is None:
            usage = Usage(sum(estimate_tokens(m.content) for m in prepared.request.messages), estimate_tokens(text))
        final = await self._finalize(
            prepared,
            text=text,
            status=status,
            usage=usage,
            finish=finish,
            error_code=error.code if error else _stop_code(status),
            latency_ms=int((time.monotonic() - started) * 1000),
            ttft_ms=int((first_token_at - started) * 1000) if first_token_at is not None else None,
        )
        if status == MessageStatus.COMPLETED:
            handle.emit(TurnDone(final))
        elif error is not None:
            handle.emit(TurnFailed(error.code, error.message, error.status_code, final, error.retry_after))
        else:
            code = _stop_code(status) or "cancelled"
            message = "The server restarted while replying." if status == MessageStatus.INTERRUPTED else "Stopped."
            handle.emit(TurnFailed(code, message, 499 if code == "cancelled" else 503, final))
        handle.queue.put_nowait(_END)
        self.running.pop(handle.id, None)

    # after the stream: one write, whatever happened

    async def _finalize(
        self,
        prepared: PreparedTurn,
        *,
        text: str,
        status: MessageStatus,
        usage: Usage,
        finish: str | None,
        error_code: str | None,
        latency_ms: int,
        ttft_ms: int | None,
    ) -> Message:
        values: dict[str, Any] = {
            "content": text,
            "status": status.value,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "finish_reason": finish,
            "error_code": error_code,
            "latency_ms": latency_ms,
            "time_to_first_token_ms": ttft_ms,
            "updated_at": utcnow(),
        }
        assistant = prepared.assistant_message
        try:
            async with autocommit_connection(self.sessionmaker) as connection:  # one statement, one round trip
                await finish_streaming(connection, assistant.id, assistant.user_id, values)
        except Exception:
            # The reply stays in the log so an operator can recover it; the row keeps `streaming`.
            logger.exception("could not store the reply of turn %s (%d chars)", assistant.id, len(text))
        if self.usage is not None:  # buffered in memory: no write here
            self.usage.record_turn(assistant.user_id, prepared.model_id, usage, status.value, latency_ms, ttft_ms)
        for name, value in values.items():
            setattr(assistant, name, value)
        return assistant

    # control

    def get(self, turn_id: uuid.UUID, user_id: uuid.UUID) -> TurnHandle | None:
        handle = self.running.get(turn_id)
        if handle is None or handle.prepared.assistant_message.user_id != user_id:
            return None
        return handle

    def cancel(self, handle: TurnHandle, status: MessageStatus = MessageStatus.CANCELLED) -> None:
        if handle.generation is not None and not handle.generation.done():
            handle.stop_status = status
            handle.generation.cancel()

    async def drain(self, grace: float) -> None:
        """Shutdown: no new turns; running ones get `grace` seconds, then are stored as interrupted."""
        self.draining = True
        tasks = [h.task for h in self.running.values() if h.task is not None]
        if not tasks:
            return
        logger.info("waiting up to %gs for %d running turn(s)", grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            for handle in list(self.running.values()):
                self.cancel(handle, MessageStatus.INTERRUPTED)
            await asyncio.wait(pending)


def _stop_code(status: MessageStatus) -> str | None:
    return {MessageStatus.CANCELLED: "cancelled", MessageStatus.INTERRUPTED: "interrupted"}.get(status)
