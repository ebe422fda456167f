"""Chat turns in process, on every backend, against the fake upstream's real wire protocols."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bench.fake_upstream import expected_text
from chatstudio.chat.models import Message
from chatstudio.chat.turns import TurnDelta, TurnDone, TurnFailed, TurnStarted
from tests.chat.conftest import PROVIDER_KEY
from tests.conftest import SignedIn, sign_up

SIXTEEN = expected_text(16)
Chat = tuple[httpx.AsyncClient, Any]


async def new_conversation(client: httpx.AsyncClient, user: SignedIn, **body: Any) -> str:
    response = await client.post("/api/v1/conversations", headers=user.headers, json=body)
    assert response.status_code == 201
    return str(response.json()["id"])


async def send(client: httpx.AsyncClient, user: SignedIn, conversation_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/api/v1/conversations/{conversation_id}/messages", headers=user.headers, json=body)


async def messages(client: httpx.AsyncClient, user: SignedIn, conversation_id: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/api/v1/conversations/{conversation_id}/messages", headers=user.headers, params={"limit": 100}
    )
    assert response.status_code == 200
    return list(response.json()["items"])


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def count_messages(app: Any) -> int:
    async with app.state.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


# the happy paths


async def test_json_turn_stores_both_messages(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user, system_prompt="be brief")
    response = await send(client, user, conversation, content="hello there")
    assert response.status_code == 200
    body = response.json()
    assert body["user_message"]["content"] == "hello there"
    assistant = body["assistant_message"]
    assert assistant["content"] == SIXTEEN
    assert assistant["status"] == "completed"
    assert assistant["model"] == "openai/gpt-test"
    assert assistant["parent_id"] == body["user_message"]["id"]
    assert assistant["finish_reason"] == "stop"
    # the fake counts input words: "be brief" + "hello there"
    assert (assistant["input_tokens"], assistant["output_tokens"]) == (4, 16)
    assert assistant["latency_ms"] >= 0
    assert assistant["time_to_first_token_ms"] is not None
    stored = await messages(client, user, conversation)
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "hello there", "completed"),
        ("assistant", SIXTEEN, "completed"),
    ]


async def test_first_exchange_names_the_conversation(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    await send(
        client, user, conversation, content="  Plan a   three-day trip to Lisbon in spring, with food tips please "
    )
    title = (await client.get(f"/api/v1/conversations/{conversation}", headers=user.headers)).json()["title"]
    assert title == "Plan a three-day trip to Lisbon in spring, with food tips…"
    await send(client, user, conversation, content="something else entirely")
    again = (await client.get(f"/api/v1/conversations/{conversation}", headers=user.headers)).json()["title"]
    assert again == title
    named = await new_conversation(client, user, title="Mine")
    await send(client, user, named, content="hello")
    assert (await client.get(f"/api/v1/conversations/{named}", headers=user.headers)).json()["title"] == "Mine"


@pytest.mark.parametrize("how", ["flag", "accept"])
async def test_sse_turn(chat: Chat, how: str) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    headers = dict(user.headers)
    body: dict[str, Any] = {"content": "stream please"}
    if how == "flag":
        body["stream"] = True
    else:
        headers["Accept"] = "text/event-stream"
    response = await client.post(f"/api/v1/conversations/{conversation}/messages", headers=headers, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-store"  # authenticated: never cached
    assert response.headers["x-accel-buffering"] == "no"
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    # Tokens that arrive together go on as one delta; this upstream sends its 16 at once.
    assert names[0] == "start"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"delta"}
    start, done = events[0][1], events[-1][1]
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    assert streamed == SIXTEEN == done["message"]["content"]
    assert done["usage"] == {"input_tokens": 2, "output_tokens": 16}
    stored = await messages(client, user, conversation)
    assert [m["id"] for m in stored] == [start["user_message_id"], start["assistant_message_id"]]
    assert stored[1]["content"] == streamed


async def test_history_goes_into_the_prompt(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user, system_prompt="be brief")
    await send(client, user, conversation, content="hello there")
    second = (await send(client, user, conversation, content="and again")).json()
    # system 2 + first question 2 + first answer 16 + new question 2 words
    assert second["assistant_message"]["input_tokens"] == 22


async def test_conversation_params_and_overrides_reach_the_provider(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user, params={"max_tokens": 5})
    capped = (await send(client, user, conversation, content="hi")).json()["assistant_message"]
    assert capped["content"] == expected_text(5)
    assert capped["finish_reason"] == "length"
    wider = (await send(client, user, conversation, content="hi", params={"max_tokens": 8})).json()
    assert wider["assistant_message"]["content"] == expected_text(8)


async def test_regenerate_makes_a_sibling_reply(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    first = (await send(client, user, conversation, content="hello there")).json()
    question, answer = first["user_message"], first["assistant_message"]
    response = await client.post(
        f"/api/v1/conversations/{conversation}/messages/{answer['id']}/regenerate",
        headers=user.headers,
        json={"params": {"max_tokens": 3}},
    )
    assert response.status_code == 200
    regenerated = response.json()
    assert regenerated["user_message"] is None
    sibling = regenerated["assistant_message"]
    assert sibling["parent_id"] == question["id"]
    assert sibling["id"] != answer["id"]
    assert sibling["content"] == expected_text(3)
    assert sibling["input_tokens"] == 2  # the old reply is not part of the prompt
    stored = await messages(client, user, conversation)
    assert [m["id"] for m in stored] == [question["id"], answer["id"], sibling["id"]]
    # the next message continues from the newest reply: the regenerated branch
    third = (await send(client, user, conversation, content="next")).json()
    assert third["user_message"]["parent_id"] == sibling["id"]
    assert third["assistant_message"]["input_tokens"] == 2 + 3 + 1


async def test_regenerate_without_body_and_on_a_question(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    first = (await send(client, user, conversation, content="hello")).json()
    url = f"/api/v1/conversations/{conversation}/messages/{first['user_message']['id']}/regenerate"
    response = await client.post(url, headers=user.headers)
    assert response.status_code == 200
    assert response.json()["assistant_message"]["parent_id"] == first["user_message"]["id"]


async def test_editing_a_question_branches_the_tree(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    first = (await send(client, user, conversation, content="first question")).json()
    second = (await send(client, user, conversation, content="second question")).json()
    response = await client.post(
        f"/api/v1/conversations/{conversation}/messages/{second['user_message']['id']}/edit",
        headers=user.headers,
        json={"content": "second question, rephrased"},
    )
    assert response.status_code == 200
    edited = response.json()
    assert edited["user_message"]["parent_id"] == first["assistant_message"]["id"]
    assert edited["user_message"]["content"] == "second question, rephrased"
    assert edited["assistant_message"]["parent_id"] == edited["user_message"]["id"]
    # prompt: first question 2 + first answer 16 + the edit 3 (the old second question is not there)
    assert edited["assistant_message"]["input_tokens"] == 21
    assert len(await messages(client, user, conversation)) == 6


async def test_edit_only_applies_to_questions(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    first = (await send(client, user, conversation, content="hello")).json()
    response = await client.post(
        f"/api/v1/conversations/{conversation}/messages/{first['assistant_message']['id']}/edit",
        headers=user.headers,
        json={"content": "x"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "message_not_found"


async def test_parent_id_continues_another_branch(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    first = (await send(client, user, conversation, content="one")).json()
    await send(client, user, conversation, content="two")
    branch = (
        await send(client, user, conversation, content="three", parent_id=first["assistant_message"]["id"])
    ).json()
    assert branch["user_message"]["parent_id"] == first["assistant_message"]["id"]
    assert branch["assistant_message"]["input_tokens"] == 1 + 16 + 1
    missing = await send(client, user, conversation, content="x", parent_id=str(uuid.uuid4()))
    assert missing.status_code == 404


# refusals: a clear 4xx and nothing stored


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content": ""}, 422, "validation_error"),
        ({"content": "   \n "}, 422, "validation_error"),
        ({"content": "x" * 100_001}, 422, "validation_error"),
        ({"content": "hi", "model": "nope/model"}, 422, "unknown_model"),
        ({"content": "hi", "model": "no-slash"}, 422, "unknown_model"),
        ({"content": "hi", "model": "anthropic/claude-sonnet-4-5"}, 422, "provider_not_configured"),
        ({"content": "hi", "params": {"temperature": 9}}, 422, "validation_error"),
        ({"content": "hi", "params": {"max_tokens": -1}}, 422, "validation_error"),
        ({"content": "hi", "base_url": "http://evil.example"}, 422, "validation_error"),
        ({"content": "x " * 40_000}, 422, "context_length_exceeded"),
    ],
)
async def test_bad_turns_are_refused_and_store_nothing(
    chat: Chat, body: dict[str, Any], status: int, code: str
) -> None:
    client, app = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user, model="slow/fake-model")
    if body.get("content", "").startswith("x "):
        # the default 8k window cannot hold 40,000 words
        body = {**body, "model": "openai/unknown-window-model"}
    response = await send(client, user, conversation, **body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert await count_messages(app) == 0


async def test_another_users_conversation_is_404(chat: Chat) -> None:
    client, app = chat
    owner, stranger = await sign_up(client), await sign_up(client)
    conversation = await new_conversation(client, owner)
    response = await send(client, stranger, conversation, content="hello")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "conversation_not_found"
    first = (await send(client, owner, conversation, content="mine")).json()
    regenerate = await client.post(
        f"/api/v1/conversations/{conversation}/messages/{first['assistant_message']['id']}/regenerate",
        headers=stranger.headers,
    )
    assert regenerate.status_code == 404
    assert await count_messages(app) == 2


# provider failures


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("broken/x", 503, "provider_unavailable"),
        ("denied/x", 502, "provider_auth_error"),
        ("busy/x", 429, "provider_busy"),
        ("toolong/x", 422, "context_length_exceeded"),
    ],
)
async def test_provider_failure_is_stored_and_reported(chat: Chat, model: str, status: int, code: str) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    response = await send(client, user, conversation, content="hello", model=model)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert PROVIDER_KEY not in response.text
    if code == "provider_busy":
        assert response.headers["retry-after"] == "7"
    stored = await messages(client, user, conversation)
    assert [(m["role"], m["status"], m["error_code"]) for m in stored] == [
        ("user", "completed", None),
        ("assistant", "failed", code),
    ]
    assert stored[1]["id"] == error["message_id"]


async def test_failure_after_the_first_byte_is_an_error_event(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    response = await send(client, user, conversation, content="hello", model="cut/x", stream=True)
    assert response.status_code == 200
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names[0] == "start"
    assert names[-1] == "error"
    assert set(names[1:-1]) == {"delta"}
    assert events[-1][1]["code"] == "provider_unavailable"
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    stored = await messages(client, user, conversation)
    assert len([m for m in stored if m["role"] == "assistant"]) == 1
    assert stored[1]["content"] == streamed == expected_text(3)
    assert stored[1]["status"] == "failed"


async def test_provider_key_never_reaches_the_client_or_log(chat: Chat, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    for model in ("denied/x", "broken/x", "openai/x"):
        response = await send(client, user, conversation, content="hello", model=model, stream=True)
        assert PROVIDER_KEY not in response.text
    assert all(PROVIDER_KEY not in record.getMessage() for record in caplog.records)


# the turn manager directly: cancel, and the single final write


async def test_cancel_keeps_what_was_generated(chat: Chat) -> None:
    client, app = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    handle = await app.state.turns.start(
        user_id=uuid.UUID(user.id), conversation_id=uuid.UUID(conversation), content="go", model="slow/x"
    )
    received: list[str] = []
    ending: Any = None
    async for event in handle.events():
        if isinstance(event, TurnDelta):
            received.append(event.text)
            if len(received) == 2:
                cancel = await client.post(
                    f"/api/v1/conversations/{conversation}/messages/{handle.id}/cancel", headers=user.headers
                )
                assert cancel.status_code == 202
        elif isinstance(event, TurnDone | TurnFailed):
            ending = event
    assert isinstance(ending, TurnFailed)
    assert ending.code == "cancelled"
    stored = await messages(client, user, conversation)
    assert stored[1]["status"] == "cancelled"
    assert stored[1]["content"] == "".join(received)
    assert len(received) < 200


async def test_cancel_is_owner_only(chat: Chat) -> None:
    client, app = chat
    owner, stranger = await sign_up(client), await sign_up(client)
    conversation = await new_conversation(client, owner)
    handle = await app.state.turns.start(
        user_id=uuid.UUID(owner.id), conversation_id=uuid.UUID(conversation), content="go", model="openai/x"
    )
    response = await client.post(
        f"/api/v1/conversations/{conversation}/messages/{handle.id}/cancel", headers=stranger.headers
    )
    assert response.status_code == 404
    events = [event async for event in handle.events()]
    assert isinstance(events[0], TurnStarted)
    assert isinstance(events[-1], TurnDone)


async def test_a_detached_turn_still_completes(chat: Chat) -> None:
    """The transport leaving (events() closed early) does not stop or lose the reply."""
    client, app = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    handle = await app.state.turns.start(
        user_id=uuid.UUID(user.id), conversation_id=uuid.UUID(conversation), content="go", model="steady/x"
    )
    events = handle.events()
    async for event in events:
        if isinstance(event, TurnDelta):
            break
    await events.aclose()
    assert handle.task is not None
    await handle.task
    stored = await messages(client, user, conversation)
    assert stored[1]["status"] == "completed"
    assert stored[1]["content"] == expected_text(30)


async def test_final_write_happens_once(chat: Chat) -> None:
    from chatstudio.chat.repository import finish_streaming
    from chatstudio.db import autocommit_connection

    client, app = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    reply = (await send(client, user, conversation, content="hello")).json()["assistant_message"]
    async with autocommit_connection(app.state.sessionmaker) as connection:
        again = await finish_streaming(
            connection, uuid.UUID(reply["id"]), uuid.UUID(user.id), {"content": "overwritten"}
        )
    assert again is False
    assert (await messages(client, user, conversation))[1]["content"] == SIXTEEN


async def test_the_final_write_is_filtered_by_owner(chat: Chat) -> None:
    from sqlalchemy import update

    from chatstudio.chat.models import Message
    from chatstudio.chat.repository import finish_streaming
    from chatstudio.db import autocommit_connection

    client, app = chat
    user, stranger = await sign_up(client), await sign_up(client)
    conversation = await new_conversation(client, user)
    reply_id = uuid.UUID((await send(client, user, conversation, content="hello")).json()["assistant_message"]["id"])
    async with autocommit_connection(app.state.sessionmaker) as connection:
        # As if the reply were still being generated.
        await connection.execute(update(Message).where(Message.id == reply_id).values(status="streaming"))
        by_stranger = await finish_streaming(connection, reply_id, uuid.UUID(stranger.id), {"content": "theirs"})
        by_owner = await finish_streaming(
            connection, reply_id, uuid.UUID(user.id), {"content": "mine", "status": "completed"}
        )
    assert (by_stranger, by_owner) == (False, True)
    assert (await messages(client, user, conversation))[1]["content"] == "mine"


async def test_draining_refuses_new_turns(chat: Chat) -> None:
    client, app = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    await app.state.turns.drain(0)
    response = await send(client, user, conversation, content="hello")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "shutting_down"
    assert response.headers["retry-after"] == "5"


async def test_drain_interrupts_running_turns(chat: Chat) -> None:
    client, app = chat
    user = await sign_up(client)
    conversation = await new_conversation(client, user)
    handle = await app.state.turns.start(
        user_id=uuid.UUID(user.id), conversation_id=uuid.UUID(conversation), content="go", model="slow/x"
    )
    received: list[str] = []
    ending: Any = None
    async for event in handle.events():
        if isinstance(event, TurnDelta):
            received.append(event.text)
            if len(received) == 3:
                await app.state.turns.drain(0)
        elif isinstance(event, TurnDone | TurnFailed):
            ending = event
    assert isinstance(ending, TurnFailed)
    assert ending.code == "interrupted"
    stored = await messages(client, user, conversation)
    assert (stored[1]["status"], stored[1]["content"]) == ("interrupted", "".join(received))


# models


async def test_models_lists_configured_providers(chat: Chat) -> None:
    client, _ = chat
    user = await sign_up(client)
    response = await client.get("/api/v1/models", headers=user.headers)
    assert response.status_code == 200
    body = response.json()
    ids = {item["id"] for item in body["items"]}
    assert "openai/gpt-4o-mini" in ids
    assert "slow/fake-model" in ids
    assert not any(i.startswith(("anthropic/", "cohere/", "local/")) for i in ids)
    assert body["default"] == "openai/gpt-test"
    assert (await client.get("/api/v1/models")).status_code == 401


async def test_many_concurrent_turns_on_a_small_pool(backend: Any, fake_upstream: str, tmp_path: Any) -> None:
    """A request must not hold its auth connection while its turn waits for another one: with a pool
    of 2 and no overflow, 8 concurrent turns would otherwise wait on each other until the pool times out."""
    import asyncio

    from tests.chat.conftest import chat_settings
    from tests.conftest import running_app

    if backend.name == "sqlite":
        pytest.skip("SQLite engines here are not sized by DB_POOL_SIZE")
    settings = chat_settings(backend.url, fake_upstream, tmp_path, db_pool_size=2, db_max_overflow=0, db_pool_timeout=3)
    async with running_app(settings, wipe=True) as (client, _):
        user = await sign_up(client)
        conversations = [await new_conversation(client, user) for _ in range(8)]
        responses = await asyncio.gather(
            *(send(client, user, c, content="hello", model="steady/x") for c in conversations)
        )
    assert [r.status_code for r in responses] == [200] * 8
    assert {r.json()["assistant_message"]["status"] for r in responses} == {"completed"}
