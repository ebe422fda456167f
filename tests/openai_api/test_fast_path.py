"""The completions fast path (openai_api.relay) answers exactly as the routed path does, wears the same
edge (request id, security and rate-limit headers), and stops the upstream call of a client that left."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bench.fake_upstream import expected_text
from chatstudio.db import create_engine
from chatstudio.main import create_app
from chatstudio.usage.models import UsageEvent
from tests.apikeys.support import PRICES, CallCounter, Studio, bearer, count_provider_calls, create_key, serve
from tests.chat.conftest import chat_settings
from tests.conftest import STRONG_PASSWORD, Backend, _wipe, running_app, sign_up

MESSAGES = [{"role": "user", "content": "hello big world"}]


def relays(calls: CallCounter) -> list[str | None]:
    """What each call into the registry asked for: "sse"/"json" from the fast path, None otherwise."""
    return [request.relay for request in calls.requests]


def data_events(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    return [json.loads(e) if e != "[DONE]" else e for e in events]


def summary(events: list[Any]) -> dict[str, Any]:
    """What a client reads from a stream. The relay passes the upstream's chunks as they came (one per
    token here, with OpenAI's `"usage": null` on each); the routed path joins a burst into one chunk."""
    chunks = [e for e in events if isinstance(e, dict)]
    with_choices = [c for c in chunks if c["choices"]]
    return {
        "models": {c["model"] for c in chunks},
        "ids": len({c["id"] for c in chunks}),
        "first_role": with_choices[0]["choices"][0]["delta"].get("role"),
        "text": "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices),
        "finish": [c["choices"][0]["finish_reason"] for c in with_choices if c["choices"][0]["finish_reason"]],
        "usage": [c["usage"] for c in chunks if c.get("usage")],
        "last": events[-1],
    }


@pytest.mark.parametrize("include_usage", [True, False])
async def test_both_paths_stream_the_same_reply(studio: Studio, include_usage: bool) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    key = await create_key(client, await sign_up(client))
    body: dict[str, Any] = {"model": "openai/gpt-test", "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    routed = await client.post("/v1/chat/completions", headers=bearer(key), json=body)
    fast = await client.post("/v1/chat/completions", headers=bearer(key), json=body)
    assert relays(calls) == [None, "sse"]  # the first call cached the key; the second took the fast path
    for response in (routed, fast):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "x-request-id" in response.headers
        assert "ratelimit-remaining" in response.headers
        assert response.text.endswith("data: [DONE]\n\n")
    routed_events, fast_events = data_events(routed.text), data_events(fast.text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in fast_events[:-1] if e["choices"])
    assert text == expected_text(16)
    assert {e["model"] for e in fast_events[:-1]} == {"openai/gpt-test"}
    assert summary(fast_events) == summary(routed_events)
    assert (fast_events[-2]["choices"] == []) is include_usage


async def test_both_paths_answer_the_same_completion(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    key = await create_key(client, await sign_up(client))
    body = {"model": "openai/gpt-test", "messages": MESSAGES, "max_tokens": 5}
    routed = (await client.post("/v1/chat/completions", headers=bearer(key), json=body)).json()
    fast_response = await client.post("/v1/chat/completions", headers=bearer(key), json=body)
    assert relays(calls) == [None, "json"]
    fast = fast_response.json()
    assert fast_response.headers["cache-control"] == "no-store"
    assert fast["model"] == routed["model"] == "openai/gpt-test"
    assert fast["choices"][0]["message"]["content"] == routed["choices"][0]["message"]["content"] == expected_text(5)
    assert fast["choices"][0]["finish_reason"] == routed["choices"][0]["finish_reason"] == "length"
    assert fast["usage"] == routed["usage"]
    await app.state.usage.flush()
    async with app.state.sessionmaker() as session:
        rows = list((await session.scalars(select(UsageEvent))).all())
    assert [(r.status, r.output_tokens) for r in rows] == [("completed", 5), ("completed", 5)]


async def test_what_the_fast_path_cannot_do_goes_the_full_way(studio: Studio) -> None:
    client, app = studio
    calls = count_provider_calls(app)
    user = await sign_up(client)
    key = await create_key(client, user)
    body = {"model": "openai/gpt-test", "messages": MESSAGES}
    assert (await client.post("/v1/chat/completions", headers=bearer(key), json=body)).status_code == 200
    # a signed-in user's token, an idempotency key, a browser origin
    assert (await client.post("/v1/chat/completions", headers=user.headers, json=body)).status_code == 200
    idempotent = {**bearer(key), "Idempotency-Key": "once"}
    assert (await client.post("/v1/chat/completions", headers=idempotent, json=body)).status_code == 200
    browser = {**bearer(key), "Origin": "https://app.example.com"}
    assert (await client.post("/v1/chat/completions", headers=browser, json=body)).status_code == 200
    assert relays(calls) == [None, None, None, None]
    # and what it does refuse, it refuses in OpenAI's shape, as the full path does
    bad = await client.post("/v1/chat/completions", headers=bearer(key), json={"model": "openai/gpt-test"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "messages"
    missing = await client.post("/v1/chat/completions", headers=bearer(key), json={**body, "model": "nowhere/x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    sneaky = await client.post(
        "/v1/chat/completions", headers=bearer(key), json={**body, "base_url": "http://evil.example"}
    )
    assert sneaky.status_code == 422
    not_json = await client.post(
        "/v1/chat/completions", headers={**bearer(key), "Content-Type": "application/json"}, content=b"{"
    )
    assert not_json.status_code == 400
    assert relays(calls) == [None, None, None, None]  # none of these reached a provider


async def test_a_model_of_another_wire_format_is_converted_by_the_full_path(
    backend: Backend, fake_upstream: str, tmp_path: Path
) -> None:
    settings = chat_settings(
        backend.url, fake_upstream, tmp_path, anthropic_api_key="sk-ant-test", anthropic_base_url=fake_upstream
    )
    async with running_app(settings, wipe=True) as (client, app):
        calls = count_provider_calls(app)
        key = await create_key(client, await sign_up(client))
        body = {"model": "anthropic/claude-test", "messages": MESSAGES, "stream": True}
        replies = [await client.post("/v1/chat/completions", headers=bearer(key), json=body) for _ in range(2)]
    assert relays(calls) == [None, None]
    for reply in replies:
        events = data_events(reply.text)
        assert events[-1] == "[DONE]"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
        assert text == expected_text(16)


@pytest.fixture
def relay_settings(backend: Backend, fake_upstream: str, tmp_path: Path) -> Iterator[Any]:
    settings = chat_settings(backend.url, fake_upstream, tmp_path, model_prices=PRICES)
    try:
        yield settings
    finally:
        asyncio.run(_wipe(settings.database_url))


def test_a_client_that_leaves_stops_the_relayed_call(relay_settings: Any) -> None:
    app = create_app(relay_settings)
    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
        calls = count_provider_calls(app)  # the registry exists once the server has started
        email = "relay-leaver@example.com"
        assert http.post("/api/v1/auth/register", json={"email": email, "password": STRONG_PASSWORD}).status_code == 201
        login = http.post("/api/v1/auth/login", json={"email": email, "password": STRONG_PASSWORD})
        created = http.post("/api/v1/api-keys", headers=bearer(login.json()["access_token"]), json={"name": "k"})
        headers = bearer(created.json()["key"])
        plain = {"model": "openai/gpt-test", "messages": MESSAGES}
        assert http.post("/v1/chat/completions", headers=headers, json=plain).status_code == 200
        body = {"model": "slow/x", "messages": MESSAGES, "stream": True}  # 200 tokens, 20 ms apart
        with http.stream("POST", "/v1/chat/completions", headers=headers, json=body) as response:
            assert response.status_code == 200
            assert next(response.iter_bytes()).startswith(b"data: {")
    # Leaving `serve` stopped the server, which waits for running responses and then writes the
    # buffered usage: a relay that kept reading would have ended `completed`, with 200 tokens.
    assert relays(calls) == [None, "sse"]
    rows = asyncio.run(_usage(relay_settings.database_url))
    assert rows[0] == ("openai/gpt-test", "completed")
    assert rows[1] == ("slow/x", "cancelled")


async def _usage(url: str) -> list[tuple[str, str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                select(UsageEvent.model, UsageEvent.status).order_by(UsageEvent.created_at)
            )
            return [(str(model), str(status)) for model, status in result.all()]
    finally:
        await engine.dispose()
