"""Token budgets: checked before the provider is called, reconciled with the real usage after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, update

from chatstudio.chat.models import Message
from chatstudio.users.models import User
from tests.chat.conftest import chat_settings
from tests.conftest import Backend, running_app, sign_up

Chat = tuple[httpx.AsyncClient, Any]


async def _turn(client: httpx.AsyncClient, headers: dict[str, str], conversation: str) -> httpx.Response:
    return await client.post(
        f"/api/v1/conversations/{conversation}/messages", headers=headers, json={"content": "hello there"}
    )


async def _count(app: Any) -> int:
    async with app.state.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


async def test_a_user_budget_stops_the_next_turn(chat: Chat) -> None:
    client, app = chat
    user = await sign_up(client)
    async with app.state.sessionmaker() as session:
        await session.execute(update(User).where(User.email == user.email).values(daily_token_budget=30))
        await session.commit()
    conversation = (await client.post("/api/v1/conversations", headers=user.headers, json={})).json()["id"]
    first = await _turn(client, user.headers, conversation)
    assert first.status_code == 200  # 2 input + 16 output tokens: 18 of 30
    refused = await _turn(client, user.headers, conversation)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 86_401
    assert await _count(app) == 2  # nothing stored, no provider call for the refused turn
    # someone else is not affected
    other = await sign_up(client)
    other_conversation = (await client.post("/api/v1/conversations", headers=other.headers, json={})).json()["id"]
    assert (await _turn(client, other.headers, other_conversation)).status_code == 200


async def test_global_monthly_default_and_usage_reconciliation(
    backend: Backend, fake_upstream: str, tmp_path: Path
) -> None:
    settings = chat_settings(backend.url, fake_upstream, tmp_path, monthly_token_budget=40)
    async with running_app(settings, wipe=True) as (client, app):
        user = await sign_up(client)
        conversation = (await client.post("/api/v1/conversations", headers=user.headers, json={})).json()["id"]
        assert (await _turn(client, user.headers, conversation)).status_code == 200
        await app.state.usage.flush()  # the real usage is now stored, not only buffered
        # history (2 + 16) + question 2 = 20 more would pass 40 only with the first reply counted
        second = await _turn(client, user.headers, conversation)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "budget_exceeded"
        # an admin's per-user budget overrides the default
        async with app.state.sessionmaker() as session:
            await session.execute(update(User).where(User.email == user.email).values(monthly_token_budget=10_000))
            await session.commit()
        assert (await _turn(client, user.headers, conversation)).status_code == 200


async def test_v1_respects_budgets(chat: Chat) -> None:
    client, app = chat
    user = await sign_up(client)
    async with app.state.sessionmaker() as session:
        await session.execute(update(User).where(User.email == user.email).values(daily_token_budget=1))
        await session.commit()
    response = await client.post(
        "/v1/chat/completions",
        headers=user.headers,
        json={"model": "openai/gpt-test", "messages": [{"role": "user", "content": "hello there"}]},
    )
    assert response.status_code == 429
    assert "budget" in response.text
