"""The /v1 surface, driven by the official `openai` package (async in process, sync over a real socket):
if its parsers accept our answers, the wire format is right."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select

from bench.fake_upstream import expected_text
from chatstudio.chat.models import Conversation, Message
from chatstudio.main import create_app
from chatstudio.usage.models import UsageEvent
from tests.apikeys.support import PRICES, Studio, bearer, count_provider_calls, create_key, sdk, serve
from tests.chat.conftest import chat_settings
from tests.conftest import STRONG_PASSWORD, Backend, _wipe, sign_up

MESSAGES: list[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello big world"}]
INPUT_WORDS = 5


async def test_non_streaming_completion(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        reply = await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "openai/gpt-test"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected_text(16)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        INPUT_WORDS,
        16,
        INPUT_WORDS + 16,
    )


async def test_streaming_with_usage(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        stream = await ai.chat.completions.create(
            model="openai/gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(16)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (INPUT_WORDS, 16)


async def test_streaming_without_usage_and_a_length_limit(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        stream = await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES, stream=True, max_tokens=4)
        chunks = [chunk async for chunk in stream]
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(4)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_raw_stream_is_server_sent_events_ending_in_done(studio: Studio) -> None:
    client, _ = studio
    key = await create_key(client, await sign_up(client))
    body = {"model": "openai/gpt-test", "messages": MESSAGES, "stream": True}
    response = await client.post("/v1/chat/completions", headers=bearer(key), json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-store"
    blocks = response.text.split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    assert all(block.startswith("data: {") for block in blocks[:-2])


async def test_models_are_listed_and_retrieved(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        models = await ai.models.list()
        ids = [model.id for model in models.data]
        assert "openai/fake-model" in ids
        assert all(model.object == "model" for model in models.data)
        found = await ai.models.retrieve("openai/fake-model")
        assert found.id == "openai/fake-model"
        with pytest.raises(openai.NotFoundError):
            await ai.models.retrieve("openai/no-such-model")


async def test_v1_is_stateless(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES)
        stream = await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES, stream=True)
        [chunk async for chunk in stream]
    async with app.state.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Conversation)) == 0
        assert await session.scalar(select(func.count()).select_from(Message)) == 0


async def test_each_call_is_recorded_against_its_key(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    key = await create_key(client, user)
    listed = (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"][0]
    async with sdk(app, key) as ai:
        await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await ai.chat.completions.create(model="busy/x", messages=MESSAGES)
    assert app.state.usage.pending == 2  # buffered, not yet written
    await app.state.usage.flush()
    async with app.state.sessionmaker() as session:
        rows = list((await session.scalars(select(UsageEvent).order_by(UsageEvent.created_at))).all())
    assert [(r.source, r.model, r.provider, r.status) for r in rows] == [
        ("api", "openai/gpt-test", "openai", "completed"),
        ("api", "busy/x", "busy", "failed"),
    ]
    ok = rows[0]
    assert str(ok.user_id) == user.id
    assert str(ok.api_key_id) == listed["id"]
    assert (ok.input_tokens, ok.output_tokens) == (INPUT_WORDS, 16)
    assert ok.cost_nanousd == INPUT_WORDS * 1000 + 16 * 2000  # $1 and $2 per million tokens
    assert ok.ttft_ms is not None
    assert ok.latency_ms >= ok.ttft_ms
    assert rows[1].output_tokens == 0


# errors, in OpenAI's shape and status codes


async def test_provider_and_model_errors(studio: Studio) -> None:
    client, app = studio
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        with pytest.raises(openai.NotFoundError) as missing:
            await ai.chat.completions.create(model="nowhere/model", messages=MESSAGES)
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.RateLimitError) as busy:
            await ai.chat.completions.create(model="busy/x", messages=MESSAGES, stream=True)
        assert busy.value.response.headers["retry-after"] == "7"
        with pytest.raises(openai.BadRequestError) as too_long:
            await ai.chat.completions.create(model="toolong/x", messages=MESSAGES)
        assert too_long.value.code == "context_length_exceeded"
        with pytest.raises(openai.InternalServerError) as denied:
            await ai.chat.completions.create(model="denied/x", messages=MESSAGES)
        assert denied.value.status_code == 502
        assert "sk-test" not in denied.value.response.text  # the provider key never leaks
        with pytest.raises(openai.InternalServerError) as broken:
            await ai.chat.completions.create(model="broken/x", messages=MESSAGES)
        assert broken.value.status_code == 503
        stream = await ai.chat.completions.create(model="cut/x", messages=MESSAGES, stream=True)
        parts: list[str] = []

        async def read() -> None:
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIError) as cut:
            await read()
        assert "".join(parts) == expected_text(3)
        assert cut.value.code == "provider_unavailable"


@pytest.mark.parametrize(
    "extra",
    [
        {"base_url": "http://evil.example/v1"},
        {"api_base": "http://evil.example/v1"},
        {"api_key": "sk-mine"},
        {"azure_endpoint": "https://evil.example"},
        {"openai_api_key": "sk-mine"},
        {"stream_options": {"include_usage": True, "base_url": "http://evil.example"}},
    ],
)
async def test_connection_settings_are_refused(studio: Studio, extra: dict[str, Any]) -> None:
    client, app = studio
    counter = count_provider_calls(app)
    key = await create_key(client, await sign_up(client))
    async with sdk(app, key) as ai:
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES, extra_body=extra)
    assert refused.value.code == "forbidden_parameter"
    assert refused.value.param is not None
    assert refused.value.param.split(".")[-1] in str(extra)
    assert counter.calls == 0


async def test_credentials_are_checked(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    read_only = await create_key(client, user, scopes=["read"])
    for bad in ("cs-not-a-real-key", "garbage"):
        async with sdk(app, bad) as ai:
            with pytest.raises(openai.AuthenticationError) as caught:
                await ai.models.list()
            assert caught.value.code == "invalid_api_key"
    async with sdk(app, read_only) as ai:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES)
        assert denied.value.code == "insufficient_scope"
    missing = await client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"


async def test_a_signed_in_user_token_works_too(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    async with sdk(app, user.access_token) as ai:
        reply = await ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES)
    assert reply.choices[0].message.content == expected_text(16)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "openai/gpt-test"}, "messages"),
        ({"model": "openai/gpt-test", "messages": []}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "openai/gpt-test", "messages": MESSAGES, "temperature": 7}, "temperature"),
        ({"model": "openai/gpt-test", "messages": MESSAGES, "n": 2}, "n"),
        ({"model": "openai/gpt-test", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        (
            {
                "model": "openai/gpt-test",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
            },
            "messages.0.content.0",
        ),
    ],
)
async def test_invalid_requests_are_400(studio: Studio, body: dict[str, Any], param: str) -> None:
    client, app = studio
    counter = count_provider_calls(app)
    key = await create_key(client, await sign_up(client))
    response = await client.post("/v1/chat/completions", headers=bearer(key), json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert counter.calls == 0


async def test_malformed_json_and_unknown_endpoints(studio: Studio) -> None:
    client, _ = studio
    key = await create_key(client, await sign_up(client))
    bad = await client.post(
        "/v1/chat/completions", headers={**bearer(key), "Content-Type": "application/json"}, content=b"{nope"
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json"
    unknown = await client.post("/v1/embeddings", headers=bearer(key), json={})
    assert unknown.status_code == 404
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture
def served(backend: Backend, fake_upstream: str, tmp_path: Path) -> Iterator[str]:
    settings = chat_settings(backend.url, fake_upstream, tmp_path, model_prices=PRICES)
    try:
        with serve(create_app(settings)) as base_url:
            yield base_url
    finally:
        asyncio.run(_wipe(settings.database_url))


def test_sync_client(served: str) -> None:
    with httpx.Client(base_url=served) as http:
        email, password = "sync-client@example.com", STRONG_PASSWORD
        assert http.post("/api/v1/auth/register", json={"email": email, "password": password}).status_code == 201
        token = http.post("/api/v1/auth/login", json={"email": email, "password": password}).json()["access_token"]
        created = http.post("/api/v1/api-keys", headers=bearer(token), json={"name": "sync"})
        key = created.json()["key"]
    with openai.OpenAI(base_url=f"{served}/v1", api_key=key, max_retries=0) as ai:
        reply = ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES)
        assert reply.choices[0].message.content == expected_text(16)
        chunks = list(
            ai.chat.completions.create(
                model="openai/gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text(16)
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 16
        with pytest.raises(openai.NotFoundError):
            ai.chat.completions.create(model="nowhere/model", messages=MESSAGES)
        with pytest.raises(openai.UnprocessableEntityError):
            ai.chat.completions.create(model="openai/gpt-test", messages=MESSAGES, extra_body={"base_url": "http://x"})


def test_a_client_that_leaves_mid_stream_releases_its_idempotency_key(served: str) -> None:
    """The upstream call is stopped and nothing is stored for a stream the client abandoned, so a retry
    with the same key runs again instead of waiting for a result that will never come."""
    with httpx.Client(base_url=served, timeout=30) as http:
        email, password = "leaver@example.com", STRONG_PASSWORD
        assert http.post("/api/v1/auth/register", json={"email": email, "password": password}).status_code == 201
        token = http.post("/api/v1/auth/login", json={"email": email, "password": password}).json()["access_token"]
        key = http.post("/api/v1/api-keys", headers=bearer(token), json={"name": "k"}).json()["key"]
        headers = {**bearer(key), "Idempotency-Key": "leave-early"}
        body = {"model": "slow/x", "messages": MESSAGES, "stream": True}  # 200 tokens, 20 ms apart
        with http.stream("POST", "/v1/chat/completions", headers=headers, json=body) as response:
            assert response.status_code == 200
            first = next(response.iter_bytes())
            assert first.startswith(b"data: {")
        retry = http.post("/v1/chat/completions", headers=headers, json=body)
        assert retry.status_code == 200
        assert "idempotent-replayed" not in retry.headers
        assert retry.text.endswith("data: [DONE]\n\n")
        assert retry.text.count('"content":" tok') == 199
