"""Idempotency-Key on sending a message and on /v1/chat/completions: a repeat, sequential or concurrent,
replays the stored result without a second provider call; the same key with another request is 409; a
failure releases the key; keys expire after 24 hours; another instance's attempt is waited for."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select, update

from bench.fake_upstream import expected_text
from chatstudio.chat.models import Message
from chatstudio.db import utcnow
from chatstudio.idempotency import SCOPE_COMPLETIONS, Claim, IdempotencyGate, fingerprint
from chatstudio.usage.models import IdempotencyKey
from tests.apikeys import support
from tests.apikeys.support import Studio, bearer, count_provider_calls, create_key, sdk
from tests.conftest import SignedIn, sign_up

# The fixtures this module uses (its directory has no conftest of its own).
fake_upstream = support.fake_upstream
studio = support.studio

SIXTEEN = expected_text(16)
MESSAGES: list[Any] = [{"role": "user", "content": "hello big world"}]


async def conversation(client: httpx.AsyncClient, user: SignedIn, **body: Any) -> str:
    response = await client.post("/api/v1/conversations", headers=user.headers, json=body)
    assert response.status_code == 201
    return str(response.json()["id"])


async def send(
    client: httpx.AsyncClient, user: SignedIn, conversation_id: str, key: str | None, **body: Any
) -> httpx.Response:
    headers = dict(user.headers)
    headers.update(body.pop("headers", {}))
    if key is not None:
        headers["Idempotency-Key"] = key
    body.setdefault("content", "hello there")
    return await client.post(f"/api/v1/conversations/{conversation_id}/messages", headers=headers, json=body)


async def count(app: Any, model: Any) -> int:
    async with app.state.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# sending a message


async def test_a_sequential_repeat_is_replayed(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    chat = await conversation(client, user)
    first = await send(client, user, chat, "key-1")
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    second = await send(client, user, chat, "key-1")
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert second.json()["assistant_message"]["content"] == SIXTEEN
    assert calls.calls == 1
    assert await count(app, Message) == 2


async def test_concurrent_repeats_make_one_call(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    chat = await conversation(client, user)
    responses = await asyncio.gather(*(send(client, user, chat, "same") for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.json()["assistant_message"]["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 3
    assert calls.calls == 1
    assert await count(app, Message) == 2


async def test_a_streamed_send_is_replayed_as_a_stream(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    chat = await conversation(client, user)
    streamed = await send(client, user, chat, "sse", headers={"Accept": "text/event-stream"})
    assert streamed.status_code == 200
    original = sse_events(streamed.text)
    again = await send(client, user, chat, "sse", headers={"Accept": "text/event-stream"})
    assert again.headers["content-type"].startswith("text/event-stream")
    replayed = sse_events(again.text)
    assert [name for name, _ in replayed] == ["start", "delta", "done"]
    assert replayed[0][1] == original[0][1]
    assert replayed[1][1]["text"] == SIXTEEN
    assert replayed[2][1] == original[-1][1]
    as_json = await send(client, user, chat, "sse")  # the same request, asking for JSON this time
    assert as_json.json()["assistant_message"]["id"] == original[0][1]["assistant_message_id"]
    assert calls.calls == 1


async def test_the_same_key_for_another_request_is_a_conflict(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    chat, other_chat = await conversation(client, user), await conversation(client, user)
    assert (await send(client, user, chat, "k")).status_code == 200
    for response in (
        await send(client, user, chat, "k", content="something else"),
        await send(client, user, other_chat, "k"),
    ):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert await count(app, Message) == 2
    # Key order and whitespace are not a different request.
    raw = b'{ "content" : "hello there" }'
    headers = {**user.headers, "Idempotency-Key": "k", "Content-Type": "application/json"}
    same = await client.post(f"/api/v1/conversations/{chat}/messages", headers=headers, content=raw)
    assert same.status_code == 200


async def test_keys_belong_to_their_user(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    alice, bob = await sign_up(client), await sign_up(client)
    assert (await send(client, alice, await conversation(client, alice), "shared")).status_code == 200
    assert (await send(client, bob, await conversation(client, bob), "shared")).status_code == 200
    assert calls.calls == 2


async def test_a_failed_send_releases_the_key(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    chat = await conversation(client, user, model="broken/x")
    assert (await send(client, user, chat, "retry-me")).status_code == 503
    assert (await send(client, user, chat, "retry-me")).status_code == 503
    assert calls.calls == 2
    missing = await send(client, user, str(uuid.uuid4()), "other")
    assert missing.status_code == 404
    assert await count(app, IdempotencyKey) == 0


async def test_keys_expire_after_a_day(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    chat = await conversation(client, user)
    first = await send(client, user, chat, "daily")
    async with app.state.sessionmaker() as session:
        row = (await session.scalars(select(IdempotencyKey))).one()
        assert row.expires_at - row.created_at == timedelta(hours=24)
        await session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    again = await send(client, user, chat, "daily")
    assert again.status_code == 200
    assert again.json()["assistant_message"]["id"] != first.json()["assistant_message"]["id"]
    assert calls.calls == 2
    gate: IdempotencyGate = app.state.idempotency
    assert await gate.purge_expired(utcnow() + timedelta(hours=25)) == 1
    assert await count(app, IdempotencyKey) == 0


@pytest.mark.parametrize("key", [b"", b"x" * 256, b"has space", "ünicode".encode()])
async def test_malformed_keys_are_refused(studio: Studio, key: bytes) -> None:
    client, app = studio
    user = await sign_up(client)
    chat = await conversation(client, user)
    response = await client.post(
        f"/api/v1/conversations/{chat}/messages",
        headers=[*user.headers.items(), ("Idempotency-Key", key)],
        json={"content": "hi"},
    )
    assert response.status_code == 422
    assert await count(app, Message) == 0


# /v1/chat/completions


async def test_completions_are_replayed_streaming_or_not(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        once = {"extra_headers": {"Idempotency-Key": "v1-plain"}}
        first = await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES, **once)
        second = await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES, **once)
        assert second.model_dump() == first.model_dump()

        streaming = {"extra_headers": {"Idempotency-Key": "v1-stream"}, "stream": True}
        options = {"include_usage": True}
        live = [
            c
            async for c in await ai.chat.completions.create(
                model="openai/gpt-test", messages=MESSAGES, stream_options=options, **streaming
            )
        ]
        again = [
            c
            async for c in await ai.chat.completions.create(
                model="openai/gpt-test", messages=MESSAGES, stream_options=options, **streaming
            )
        ]
        with pytest.raises(openai.ConflictError) as conflict:
            await ai.chat.completions.create(
                model="openai/gpt-test", messages=[{"role": "user", "content": "no"}], **once
            )
    assert conflict.value.code == "idempotency_key_reused"
    assert calls.calls == 2

    def text(chunks: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(again) == text(live) == SIXTEEN
    assert again[0].id == live[0].id
    assert again[-1].usage == live[-1].usage
    assert [c.choices[0].finish_reason for c in again if c.choices and c.choices[0].finish_reason] == ["stop"]


async def test_concurrent_completions_make_one_call(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    key = await create_key(client, await sign_up(client))
    headers = {**bearer(key), "Idempotency-Key": "together"}
    body = {"model": "openai/gpt-test", "messages": MESSAGES}
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", headers=headers, json=body) for _ in range(4))
    )
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.json()["id"] for r in responses}) == 1
    assert calls.calls == 1


async def test_a_failed_completion_releases_the_key(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    key = await create_key(client, await sign_up(client))
    headers = {**bearer(key), "Idempotency-Key": "fails"}
    body = {"model": "broken/x", "messages": MESSAGES}
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", headers=headers, json=body)).status_code == 503
    cut = {"model": "cut/x", "messages": MESSAGES, "stream": True}
    for _ in range(2):
        assert (
            await client.post("/v1/chat/completions", headers=headers | {"Idempotency-Key": "cut"}, json=cut)
        ).status_code == 200
    assert calls.calls == 4
    assert await count(app, IdempotencyKey) == 0
    bad = await client.post("/v1/chat/completions", headers={**bearer(key), "Idempotency-Key": "a b"}, json=body)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "Idempotency-Key"


async def test_another_instances_attempt_is_waited_for(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    key = await create_key(client, user)
    body = {"model": "openai/gpt-test", "messages": MESSAGES}
    other_instance = IdempotencyGate(app.state.sessionmaker)
    claim = await other_instance.claim(
        uuid.UUID(user.id), SCOPE_COMPLETIONS, "elsewhere", fingerprint("/v1/chat/completions", body)
    )
    assert isinstance(claim, Claim)
    waiting = asyncio.create_task(
        client.post("/v1/chat/completions", headers={**bearer(key), "Idempotency-Key": "elsewhere"}, json=body)
    )
    stored = {
        "id": "chatcmpl-elsewhere",
        "object": "chat.completion",
        "created": 1,
        "model": "openai/gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "done there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    await other_instance.complete(claim, 200, json.dumps(stored))
    response = await waiting
    assert response.status_code == 200
    assert response.json()["id"] == "chatcmpl-elsewhere"
    assert calls.calls == 0


async def test_an_abandoned_attempt_is_taken_over(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    chat = await conversation(client, user)
    crashed = IdempotencyGate(app.state.sessionmaker)
    body = {
        "content": "hello there",
        "model": None,
        "params": None,
        "stream": None,
        "parent_id": None,
        "file_ids": None,
    }
    path = f"/api/v1/conversations/{chat}/messages"
    print_ = fingerprint(path, body)
    claim = await crashed.claim(uuid.UUID(user.id), "chat.messages", "orphan", print_)
    assert isinstance(claim, Claim)
    async with app.state.sessionmaker() as session:
        await session.execute(update(IdempotencyKey).values(locked_at=utcnow() - timedelta(hours=1)))
        await session.commit()
    response = await send(client, user, chat, "orphan")
    assert response.status_code == 200
    assert calls.calls == 1
    await crashed.release(claim)  # the dead attempt's late release no longer touches the row
    last = await send(client, user, chat, "orphan")
    assert last.headers["idempotent-replayed"] == "true"
    assert calls.calls == 1
