"""`Idempotency-Key` for `POST /conversations/{id}/messages` and `POST /v1/chat/completions`.

A repeat of a request (same user, same key) never runs it twice: the first claims the key by inserting a
`pending` row (unique per user, scope and key), runs, and stores its result; a repeat, sequential or
concurrent, waits for that result and replays it without calling the provider. The same key with a
different request (path + body) is 409 `idempotency_key_reused`. Keys expire 24 hours after their claim.

Waiting: repeats on the same instance wait on an in-process event; repeats on another instance poll the
row. An attempt that fails (provider error, client gone before the result existed) releases the key, so a
retry runs for real. A `pending` row older than `stale_after` (its instance died) is taken over.

`IdempotencyGate` holds the rules and knows nothing of HTTP; the helpers at the end adapt it to the
chat route.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header, Request
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import Response

from chatstudio.chat.models import MessageStatus
from chatstudio.chat.schemas import MessageOut, TurnOut
from chatstudio.chat.transport import sse_frame
from chatstudio.chat.turns import TurnHandle
from chatstudio.db import session_scope, utcnow
from chatstudio.errors import Conflict
from chatstudio.usage.models import IdempotencyKey
from chatstudio.usage.repository import IdempotencyRepository

logger = logging.getLogger(__name__)

KEY_TTL = timedelta(hours=24)
POLL_INTERVAL = 0.1
MAX_RECLAIMS = 5
PENDING, DONE = "pending", "done"
SCOPE_MESSAGES = "chat.messages"
SCOPE_COMPLETIONS = "v1.chat.completions"
REPLAYED_HEADER = "Idempotent-Replayed"

# Printable ASCII without spaces, as UUIDs and the usual random tokens are.
IdempotencyKeyHeader = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
]

Ident = tuple[uuid.UUID, str, str]


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"
    default_message = "This Idempotency-Key was already used with a different request."


class IdempotencyKeyInProgress(Conflict):
    code = "idempotency_key_in_progress"
    default_message = "A request with this Idempotency-Key is still running; retry shortly."


@dataclass(frozen=True, slots=True)
class Claim:
    """This request owns the key: run it, then `complete` or `release`."""

    ident: Ident
    row_id: uuid.UUID
    attempt: int


@dataclass(frozen=True, slots=True)
class Stored:
    """An earlier request's result, to be replayed."""

    status: int
    body: str


class _Retry:
    pass


class _Wait:
    pass


def fingerprint(path: str, body: Any) -> str:
    """Of the request's meaning, not its bytes: key order and whitespace do not matter."""
    canonical = json.dumps([path, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyGate:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        ttl: timedelta = KEY_TTL,
        wait_limit: float = 330.0,
        stale_after: timedelta = timedelta(minutes=6),
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._wait_limit = wait_limit
        self._stale_after = stale_after
        self._poll = poll_interval
        self._local: dict[Ident, asyncio.Event] = {}
        self._settling: set[asyncio.Task[None]] = set()

    async def claim(self, user_id: uuid.UUID, scope: str, key: str, print_: str) -> Claim | Stored:
        ident = (user_id, scope, key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_limit
        reclaims = 0
        while True:
            local = self._local.get(ident)
            if local is not None:
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await local.wait()
                except TimeoutError:
                    raise IdempotencyKeyInProgress() from None
            else:
                self._local[ident] = asyncio.Event()
                try:
                    claim = await self._insert(ident, print_)
                except BaseException:
                    self._wake(ident)
                    raise
                if claim is not None:
                    return claim
                self._wake(ident)
            outcome = await self._inspect(ident, print_)
            if isinstance(outcome, Claim):
                self._local.setdefault(ident, asyncio.Event())
                return outcome
            if isinstance(outcome, Stored):
                return outcome
            if isinstance(outcome, _Retry):
                reclaims += 1
                if reclaims > MAX_RECLAIMS:
                    raise IdempotencyKeyInProgress()
            elif ident not in self._local:  # running on another instance: poll its row
                if loop.time() >= deadline:
                    raise IdempotencyKeyInProgress()
                await asyncio.sleep(min(self._poll, max(0.0, deadline - loop.time())))

    async def complete(self, claim: Claim, status: int, body: str) -> None:
        try:
            async with session_scope(self._sessionmaker) as session:
                values = {"status": DONE, "response_status": status, "response_body": body, "locked_at": utcnow()}
                await IdempotencyRepository(session).update_attempt(claim.row_id, claim.attempt, values)
        finally:
            self._wake(claim.ident)

    async def release(self, claim: Claim) -> None:
        try:
            async with session_scope(self._sessionmaker) as session:
                await IdempotencyRepository(session).delete_attempt(claim.row_id, claim.attempt)
        finally:
            self._wake(claim.ident)

    def settle_after(
        self, claim: Claim, task: asyncio.Task[None], result: Callable[[], tuple[int, str] | None]
    ) -> None:
        """Once `task` (a chat turn, which outlives its request) ends: store `result()`, or release on None."""

        async def settle() -> None:
            await asyncio.wait([task])
            try:
                outcome = result()
            except Exception:
                logger.exception("idempotency: could not build the result to store; releasing the key")
                outcome = None
            try:
                await (self.release(claim) if outcome is None else self.complete(claim, *outcome))
            except Exception:
                logger.exception("idempotency: could not settle a key")

        settling = asyncio.create_task(settle(), name="idempotency-settle")
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)

    async def purge_expired(self, now: datetime) -> int:
        async with session_scope(self._sessionmaker) as session:
            return await IdempotencyRepository(session).purge_expired(now)

    async def aclose(self) -> None:
        if self._settling:
            await asyncio.wait(list(self._settling))

    def _wake(self, ident: Ident) -> None:
        event = self._local.pop(ident, None)
        if event is not None:
            event.set()

    async def _insert(self, ident: Ident, print_: str) -> Claim | None:
        user_id, scope, key = ident
        now = utcnow()
        row = IdempotencyKey(
            user_id=user_id,
            scope=scope,
            key=key,
            fingerprint=print_,
            status=PENDING,
            attempt=1,
            locked_at=now,
            created_at=now,
            expires_at=now + self._ttl,
        )
        try:
            async with session_scope(self._sessionmaker) as session:
                await IdempotencyRepository(session).add(row)
        except IntegrityError:
            return None
        return Claim(ident, row.id, 1)

    async def _inspect(self, ident: Ident, print_: str) -> Claim | Stored | _Retry | _Wait:
        async with session_scope(self._sessionmaker) as session:
            keys = IdempotencyRepository(session)
            row = await keys.get(*ident)
            if row is None:
                return _Retry()  # released meanwhile: claim it anew
            now = utcnow()
            abandoned = row.status == PENDING and now - row.locked_at > self._stale_after
            if row.expires_at <= now or abandoned:
                # Read before the UPDATE: it synchronises `row` in the session.
                row_id, attempt = row.id, row.attempt
                values = {
                    "fingerprint": print_,
                    "status": PENDING,
                    "attempt": attempt + 1,
                    "response_status": None,
                    "response_body": None,
                    "locked_at": now,
                    "created_at": now,
                    "expires_at": now + self._ttl,
                }
                if await keys.update_attempt(row_id, attempt, values):
                    return Claim(ident, row_id, attempt + 1)
                return _Retry()
            if row.fingerprint != print_:
                raise IdempotencyKeyReused()
            if row.status == DONE:
                return Stored(row.response_status or 200, row.response_body or "")
            return _Wait()


# The chat route


async def idempotent_turn(
    request: Request,
    user_id: uuid.UUID,
    key: str,
    body: BaseModel,
    start: Callable[[], Awaitable[TurnHandle]],
    respond: Callable[[TurnHandle], Awaitable[Any]],
    stream: bool,
) -> Any:
    """Sends a message at most once per key. The result stored is the finished turn (its two messages),
    so a repeat gets the reply even if the first client left mid-stream; a failed turn releases the key."""
    gate: IdempotencyGate = request.app.state.idempotency
    print_ = fingerprint(request.url.path, body.model_dump(mode="json"))
    outcome = await gate.claim(user_id, SCOPE_MESSAGES, key, print_)
    if isinstance(outcome, Stored):
        return _replay_turn(outcome, stream)
    try:
        handle = await start()
    except BaseException:
        await gate.release(outcome)
        raise
    assert handle.task is not None
    gate.settle_after(outcome, handle.task, lambda: _turn_result(handle))
    return await respond(handle)


def _turn_result(handle: TurnHandle) -> tuple[int, str] | None:
    prepared = handle.prepared
    if prepared.assistant_message.status != MessageStatus.COMPLETED:
        return None
    user_message = MessageOut.model_validate(prepared.user_message) if prepared.user_message else None
    turn = TurnOut(user_message=user_message, assistant_message=MessageOut.model_validate(prepared.assistant_message))
    return 200, turn.model_dump_json()


def _replay_turn(stored: Stored, stream: bool) -> Response:
    headers = {REPLAYED_HEADER: "true"}
    if not stream:
        return Response(stored.body, status_code=stored.status, media_type="application/json", headers=headers)
    turn = json.loads(stored.body)
    question, reply = turn["user_message"], turn["assistant_message"]
    start = {
        "conversation_id": reply["conversation_id"],
        "user_message_id": question["id"] if question else None,
        "assistant_message_id": reply["id"],
        "model": reply["model"],
    }
    usage = {"input_tokens": reply["input_tokens"], "output_tokens": reply["output_tokens"]}
    frames = [sse_frame("start", start)]
    if reply["content"]:
        frames.append(sse_frame("delta", {"text": reply["content"]}))
    frames.append(sse_frame("done", {"finish_reason": reply["finish_reason"], "usage": usage, "message": reply}))
    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return Response(b"".join(frames), media_type="text/event-stream", headers=headers)
