from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from chatstudio.chat.schemas import (
    ConversationCreate,
    ConversationOut,
    ConversationUpdate,
    EditMessageRequest,
    MessageOut,
    RegenerateRequest,
    SendMessageRequest,
    TurnOut,
)
from chatstudio.chat.service import ConversationService
from chatstudio.chat.transport import sse_stream
from chatstudio.chat.turns import MessageNotFound, TurnDone, TurnFailed, TurnHandle, TurnStarted
from chatstudio.deps import AuditDep, CallerDep, CurrentUser, SessionDep, SettingsDep, TurnsDep, request_id_of
from chatstudio.errors import error_payload
from chatstudio.files.storage import FileStore
from chatstudio.idempotency import IdempotencyKeyHeader, idempotent_turn
from chatstudio.observability.cache import json_with_etag
from chatstudio.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from chatstudio.schemas import Page

router = APIRouter(prefix="/conversations", tags=["conversations"])

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
Cursor = Annotated[str | None, Query(max_length=500)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConversationOut)
async def create_conversation(body: ConversationCreate, user: CurrentUser, session: SessionDep) -> Any:
    return await ConversationService(session).create(user.id, body)


@router.get("", response_model=Page[ConversationOut])
async def list_conversations(
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
    q: Annotated[str | None, Query(max_length=200, description="search in titles")] = None,
    archived: bool = False,
    pinned: bool | None = None,
) -> Any:
    items, next_cursor = await ConversationService(session).list_page(
        user.id,
        limit=limit,
        cursor=cursor,
        q=q or None,
        archived=archived,
        pinned=pinned,
    )
    # ETag/304: a client polling its list gets an empty answer while nothing changed.
    page = Page[ConversationOut].model_validate({"items": items, "next_cursor": next_cursor})
    return json_with_etag(request, page.model_dump_json(by_alias=True).encode())


@router.get("/{conversation_id}", response_model=ConversationOut)
async def get_conversation(conversation_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Any:
    return await ConversationService(session).get(user.id, conversation_id)


@router.patch("/{conversation_id}", response_model=ConversationOut)
async def update_conversation(
    conversation_id: uuid.UUID,
    body: ConversationUpdate,
    user: CurrentUser,
    session: SessionDep,
) -> Any:
    return await ConversationService(session).update(user.id, conversation_id, body)


@router.delete("/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(
    conversation_id: uuid.UUID, user: CurrentUser, session: SessionDep, audit: AuditDep
) -> Response:
    await ConversationService(session).delete(user.id, conversation_id)
    await audit("conversation.delete", actor_id=user.id, target_type="conversation", target_id=conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{conversation_id}/messages", response_model=Page[MessageOut])
async def list_messages(
    conversation_id: uuid.UUID,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> Any:
    items, next_cursor = await ConversationService(session).list_messages(
        user.id, conversation_id, limit=limit, cursor=cursor
    )
    page = Page[MessageOut].model_validate({"items": items, "next_cursor": next_cursor})
    return json_with_etag(request, page.model_dump_json(by_alias=True).encode())


def _wants_stream(request: Request, stream: bool | None) -> bool:
    if stream is not None:
        return stream
    return "text/event-stream" in request.headers.get("accept", "")


async def _respond(request: Request, handle: TurnHandle, stream: bool) -> Any:
    """SSE: the status is fixed at 200 once `start` is out; later failures are an `error` event.
    JSON: wait for the end (the same events, gathered) and answer with the stored messages."""
    if stream:
        return StreamingResponse(
            sse_stream(handle.batches()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    started: TurnStarted | None = None
    async for event in handle.events():
        if isinstance(event, TurnStarted):
            started = event
        elif isinstance(event, TurnDone):
            assert started is not None
            return TurnOut(
                user_message=MessageOut.model_validate(started.user_message) if started.user_message else None,
                assistant_message=MessageOut.model_validate(event.assistant_message),
            )
        elif isinstance(event, TurnFailed):
            status = 409 if event.status_code == 499 else event.status_code
            extra = {"message_id": str(event.assistant_message.id)} if event.assistant_message else {}
            headers = {"Retry-After": str(max(1, round(event.retry_after)))} if event.retry_after else None
            body = error_payload(event.code, event.message, request_id_of(request), **extra)
            return JSONResponse(body, status, headers=headers)
    raise AssertionError("a turn always ends with done or error")


@router.post("/{conversation_id}/messages", response_model=TurnOut, status_code=status.HTTP_200_OK)
async def send_message(
    conversation_id: uuid.UUID,
    body: SendMessageRequest,
    request: Request,
    caller: CallerDep,
    turns: TurnsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    user = caller.user

    async def start() -> TurnHandle:
        return await turns.start(
            user_id=user.id,
            conversation_id=conversation_id,
            content=body.content,
            model=body.model,
            params=body.params,
            parent_id=body.parent_id,
            file_ids=body.file_ids,
            files=FileStore.for_settings(settings),
            # Read from the database by this request's sign-in check; an API key's owner is cached.
            verified_user=user if caller.api_key is None else None,
        )

    stream = _wants_stream(request, body.stream)
    if idempotency_key is not None:  # a repeat replays the stored turn instead of calling the model again
        respond = functools.partial(_respond, request, stream=stream)
        return await idempotent_turn(request, user.id, idempotency_key, body, start, respond, stream)
    return await _respond(request, await start(), stream)


@router.post("/{conversation_id}/messages/{message_id}/regenerate", response_model=TurnOut)
async def regenerate(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    request: Request,
    user: CurrentUser,
    turns: TurnsDep,
    settings: SettingsDep,
    body: RegenerateRequest | None = None,
) -> Any:
    body = body or RegenerateRequest()
    handle = await turns.start(
        user_id=user.id,
        conversation_id=conversation_id,
        content=None,
        model=body.model,
        params=body.params,
        regenerate_from=message_id,
        files=FileStore.for_settings(settings),
    )
    return await _respond(request, handle, _wants_stream(request, body.stream))


@router.post("/{conversation_id}/messages/{message_id}/edit", response_model=TurnOut)
async def edit_message(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    body: EditMessageRequest,
    request: Request,
    user: CurrentUser,
    turns: TurnsDep,
    settings: SettingsDep,
) -> Any:
    """A changed question is a new sibling of the old one; the old branch stays in the tree."""
    handle = await turns.start_edit(
        user_id=user.id,
        conversation_id=conversation_id,
        message_id=message_id,
        content=body.content,
        model=body.model,
        params=body.params,
        files=FileStore.for_settings(settings),
    )
    return await _respond(request, handle, _wants_stream(request, body.stream))


@router.post("/{conversation_id}/messages/{message_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
async def cancel_turn(conversation_id: uuid.UUID, message_id: uuid.UUID, user: CurrentUser, turns: TurnsDep) -> Any:
    """Stop a reply that is being generated (by this server instance); what was written is kept."""
    handle = turns.get(message_id, user.id)
    if handle is None or handle.prepared.assistant_message.conversation_id != conversation_id:
        raise MessageNotFound("No reply is being generated for this message.")
    turns.cancel(handle)
    return {"status": "cancelling"}
