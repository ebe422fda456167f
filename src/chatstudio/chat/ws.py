"""`/ws/chat`: several streamed turns over one socket.

Client frames: auth {token}, message {request_id, conversation_id, content, model?, params?, parent_id?, file_ids?},
cancel {request_id}, ping. Server frames: start, delta, done, error, pong, each with the request_id.
The token comes in the first frame or in `Sec-WebSocket-Protocol: bearer, <token>`; never in the URL.
Protocol-level pings are uvicorn's (ws_ping_interval); this module adds an idle timeout, a frame size
cap and a per-connection frame rate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

from chatstudio.chat.schemas import ChatParams, FileIds, MessageContent, ModelId
from chatstudio.chat.transport import event_payload
from chatstudio.chat.turns import TurnHandle, TurnManager
from chatstudio.config import Settings
from chatstudio.db import session_scope
from chatstudio.errors import AppError
from chatstudio.files.storage import FileStore
from chatstudio.llm.base import LLMError
from chatstudio.observability.middleware import RouteLabel
from chatstudio.users.models import User
from chatstudio.users.service import AuthService

logger = logging.getLogger(__name__)
router = APIRouter()

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_IDLE = 4408
MAX_FRAME_BYTES = 256 * 1024
AUTH_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 300.0
FRAMES_PER_WINDOW = 30
RATE_WINDOW_SECONDS = 10.0

RequestId = Annotated[str, Field(min_length=1, max_length=100)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageFrame(_Frame):
    type: Literal["message"]
    request_id: RequestId
    conversation_id: uuid.UUID
    content: MessageContent
    model: ModelId | None = None
    params: ChatParams | None = None
    parent_id: uuid.UUID | None = None
    file_ids: FileIds = Field(default_factory=list)


class CancelFrame(_Frame):
    type: Literal["cancel"]
    request_id: RequestId


def origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """Browsers always send Origin; a page on another site must not ride a user's token."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser: nothing to defend against here, the token decides
    if origin in settings.allowed_origins:
        return True
    host = websocket.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _bearer_subprotocol(websocket: WebSocket) -> str | None:
    protocols: list[str] = [str(p).strip() for p in websocket.scope.get("subprotocols", [])]
    if len(protocols) >= 2 and protocols[0].lower() == "bearer":
        return protocols[1]
    return None


class _RateLimit:
    def __init__(self) -> None:
        self.window_start = time.monotonic()
        self.count = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window_start >= RATE_WINDOW_SECONDS:
            self.window_start, self.count = now, 0
        self.count += 1
        return self.count <= FRAMES_PER_WINDOW


class ChatSocket:
    def __init__(self, websocket: WebSocket, settings: Settings, turns: TurnManager) -> None:
        self.websocket = websocket
        self.settings = settings
        self.turns = turns
        self.user: User | None = None
        self.send_lock = asyncio.Lock()
        self.active: dict[str, tuple[TurnHandle, asyncio.Task[None]]] = {}
        self.rate = _RateLimit()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_text(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))

    async def error(self, code: str, message: str, request_id: str | None = None) -> None:
        await self.send({"type": "error", "request_id": request_id, "code": code, "message": message})

    async def authenticate(self, token: str) -> User | None:
        try:
            async with session_scope(self.websocket.app.state.sessionmaker) as session:
                user, _ = await AuthService(session, self.settings).authenticate_access_token(token)
                return user
        except AppError:
            return None

    async def run(self) -> None:
        websocket = self.websocket
        header_token = _bearer_subprotocol(websocket)
        await websocket.accept(subprotocol="bearer" if header_token else None)
        if not origin_allowed(websocket, self.settings):
            await websocket.close(CLOSE_FORBIDDEN_ORIGIN, "origin not allowed")
            return
        token = header_token or await self._token_from_first_frame()
        self.user = await self.authenticate(token) if token else None
        if self.user is None:
            await websocket.close(CLOSE_UNAUTHORIZED, "authentication required")
            return
        await self.send({"type": "ready", "user_id": str(self.user.id)})
        sockets = _sockets(websocket.app.state).setdefault(self.user.id, set())
        sockets.add(self)
        try:
            await self._loop()
        except WebSocketDisconnect:
            pass
        finally:
            sockets.discard(self)
            # The turns go on and are stored; only their forwarding to this socket stops.
            for _, forwarder in self.active.values():
                forwarder.cancel()

    async def _token_from_first_frame(self) -> str | None:
        try:
            raw = await asyncio.wait_for(self.websocket.receive_text(), AUTH_TIMEOUT_SECONDS)
            frame = json.loads(raw)
        except (TimeoutError, ValueError, KeyError, WebSocketDisconnect, RuntimeError):
            return None
        if isinstance(frame, dict) and frame.get("type") == "auth" and isinstance(frame.get("token"), str):
            return cast(str, frame["token"])
        return None

    async def _receive(self) -> str | None:
        timeout = None if self.active else IDLE_TIMEOUT_SECONDS
        try:
            # A timer, not wait_for's extra task: every idle socket waits here.
            async with asyncio.timeout(timeout):
                message = await self.websocket.receive()
        except TimeoutError:
            await self.websocket.close(CLOSE_IDLE, "idle")
            raise WebSocketDisconnect(CLOSE_IDLE) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            await self.error("invalid_frame", "Frames must be JSON text.")
            return None
        if len(text.encode()) > MAX_FRAME_BYTES:
            await self.error("frame_too_large", f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
            return None
        return str(text)

    async def _loop(self) -> None:
        while True:
            text = await self._receive()
            if text is None:
                continue
            if not self.rate.allow():
                await self.error("rate_limited", "Too many frames; slow down.")
                continue
            try:
                frame = json.loads(text)
            except (ValueError, RecursionError):  # deep nesting raises RecursionError, not ValueError
                await self.error("invalid_frame", "The frame is not valid JSON.")
                continue
            if not isinstance(frame, dict):
                await self.error("invalid_frame", "Frames must be JSON objects.")
                continue
            kind = frame.get("type")
            request_id = frame.get("request_id") if isinstance(frame.get("request_id"), str) else None
            if kind == "ping":
                await self.send({"type": "pong", "request_id": request_id})
            elif kind == "message":
                await self._start_turn(frame, request_id)
            elif kind == "cancel":
                await self._cancel(frame, request_id)
            else:
                await self.error("invalid_frame", "Unknown frame type.", request_id)

    async def _start_turn(self, frame: dict[str, Any], request_id: str | None) -> None:
        try:
            message = MessageFrame.model_validate(frame)
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            await self.error("validation_error", detail, request_id)
            return
        if message.request_id in self.active:
            await self.error("duplicate_request_id", "A turn with this request_id is running.", message.request_id)
            return
        assert self.user is not None
        try:
            handle = await self.turns.start(
                user_id=self.user.id,
                conversation_id=message.conversation_id,
                content=message.content,
                model=message.model,
                params=message.params,
                parent_id=message.parent_id,
                file_ids=message.file_ids,
                files=FileStore.for_settings(self.settings),
            )
        except (AppError, LLMError) as exc:
            await self.error(exc.code, exc.message, message.request_id)
            return
        except Exception:
            # One failed turn must not take the socket (and its other turns) down with it.
            logger.exception("could not start a turn on a socket")
            await self.error("internal_error", "An unexpected error occurred.", message.request_id)
            return
        forwarder = asyncio.create_task(self._forward(message.request_id, handle))
        self.active[message.request_id] = (handle, forwarder)

    async def _forward(self, request_id: str, handle: TurnHandle) -> None:
        try:
            async for event in handle.events():
                name, data = event_payload(event)
                await self.send({"type": name, "request_id": request_id, **data})
        except (WebSocketDisconnect, RuntimeError):
            pass  # the socket went away; the turn finishes and is stored without us
        finally:
            self.active.pop(request_id, None)

    async def _cancel(self, frame: dict[str, Any], request_id: str | None) -> None:
        try:
            cancel = CancelFrame.model_validate(frame)
        except ValidationError:
            await self.error("validation_error", "cancel needs a request_id.", request_id)
            return
        entry = self.active.get(cancel.request_id)
        if entry is None:
            await self.error("not_found", "No running turn has this request_id.", cancel.request_id)
            return
        self.turns.cancel(entry[0])


def _sockets(state: Any) -> dict[uuid.UUID, set[ChatSocket]]:
    if not hasattr(state, "chat_sockets"):
        state.chat_sockets = {}
    return cast(dict[uuid.UUID, set[ChatSocket]], state.chat_sockets)


async def close_user_sockets(state: Any, user_id: uuid.UUID) -> int:
    """Close a disabled user's open sockets on this instance at once (4401, like a bad token).

    Other instances refuse that user's next frame anyway: every turn re-checks the account."""
    closed = 0
    for socket in list(_sockets(state).get(user_id, ())):
        try:
            await socket.websocket.close(CLOSE_UNAUTHORIZED, "account disabled")
            closed += 1
        except RuntimeError:
            pass  # already closing
    return closed


PATH = "/ws/chat"
_ROUTE = RouteLabel(PATH)


@router.websocket(PATH)
async def chat_socket(websocket: WebSocket) -> None:
    app_state = websocket.app.state
    await ChatSocket(websocket, app_state.settings, app_state.turns).run()


async def serve_chat_socket(scope: Scope, receive: Receive, send: Send) -> None:
    """The same endpoint as plain ASGI, served in front of the framework (see main._edge): an idle
    socket then keeps no frames of the routing and exception layers alive, a few KB each."""
    scope["route"] = _ROUTE
    await chat_socket(WebSocket(scope, receive, send))
