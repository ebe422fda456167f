"""The usage ledger: every model call is charged (chat turns and /v1), buffered in memory and written in
batches, reported per day (in TIMEZONE) or per model, to its user and to administrators, and old detail
is folded into daily totals without changing any report."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from chatstudio.config import ConfigError, load_settings
from chatstudio.db import create_engine, create_sessionmaker
from chatstudio.usage.ledger import UsageLedger, UsageRecord
from chatstudio.usage.models import UsageDaily, UsageEvent
from chatstudio.usage.prices import PriceTable
from chatstudio.users.models import User
from tests.apikeys.support import PRICES, Studio, bearer, create_key
from tests.conftest import TEST_SECRET_KEY, SignedIn, sign_up

Q = "hello there"  # two words: the fake upstream counts words as input tokens


async def converse(client: Any, headers: dict[str, str], content: str = Q, model: str | None = None) -> None:
    created = await client.post("/api/v1/conversations", headers=headers, json={"model": model} if model else {})
    assert created.status_code == 201, created.text
    sent = await client.post(
        f"/api/v1/conversations/{created.json()['id']}/messages", headers=headers, json={"content": content}
    )
    assert sent.status_code == 200, sent.text


async def report(client: Any, user: SignedIn, path: str = "/api/v1/usage", **params: Any) -> dict[str, Any]:
    response = await client.get(path, headers=user.headers, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def events(app: Any) -> list[UsageEvent]:
    async with app.state.sessionmaker() as session:
        return list((await session.scalars(select(UsageEvent).order_by(UsageEvent.created_at))).all())


def record(user_id: uuid.UUID, at: datetime, model: str = "openai/gpt-test", **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "api_key_id": None,
        "source": "api",
        "input_tokens": 10,
        "output_tokens": 20,
        "status": "completed",
        "latency_ms": 100,
        "ttft_ms": 10,
    }
    values.update(fields)
    return UsageRecord(user_id=user_id, model=model, at=at, **values)


async def test_chat_turns_are_charged_to_the_user_and_the_key(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    key = await create_key(client, user)
    key_id = (await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"][0]["id"]
    await converse(client, bearer(key))
    await converse(client, user.headers)  # the same user signed in: no key
    await converse(client, user.headers, model="steady/x")
    assert await events(app) == []  # nothing written per call
    assert app.state.usage.pending == 3
    await app.state.usage.flush()
    rows = await events(app)
    assert [(r.source, r.model, r.status, str(r.api_key_id) if r.api_key_id else None) for r in rows] == [
        ("chat", "openai/gpt-test", "completed", key_id),
        ("chat", "openai/gpt-test", "completed", None),
        ("chat", "steady/x", "completed", None),
    ]
    assert {str(r.user_id) for r in rows} == {user.id}
    assert (rows[0].input_tokens, rows[0].output_tokens) == (2, 16)
    assert rows[0].cost_nanousd == 2 * 1000 + 16 * 2000
    assert rows[2].cost_nanousd == (2 + 30) * 500  # priced by the "steady/*" wildcard

    by_model = await report(client, user, group_by="model")
    assert [(i["key"], i["requests"], i["input_tokens"], i["output_tokens"]) for i in by_model["items"]] == [
        ("openai/gpt-test", 2, 4, 32),
        ("steady/x", 1, 2, 30),
    ]
    assert by_model["items"][0]["cost_usd"] == pytest.approx(2 * (2e-6 + 32e-6))
    assert by_model["total"]["requests"] == 3
    assert by_model["total"]["total_tokens"] == 4 + 32 + 32
    by_day = await report(client, user)
    today = datetime.now(UTC).date().isoformat()  # TIMEZONE is UTC in these tests
    assert [(i["key"], i["requests"]) for i in by_day["items"]] == [(today, 3)]
    assert by_day["items"][0]["avg_latency_ms"] >= 0
    assert by_day["timezone"] == "UTC"


async def test_failed_turns_count_as_failures(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    created = await client.post("/api/v1/conversations", headers=user.headers, json={"model": "broken/x"})
    sent = await client.post(
        f"/api/v1/conversations/{created.json()['id']}/messages", headers=user.headers, json={"content": Q}
    )
    assert sent.status_code == 503
    await app.state.usage.flush()
    line = (await report(client, user, group_by="model"))["items"][0]
    assert (line["key"], line["requests"], line["failures"], line["avg_ttft_ms"]) == ("broken/x", 1, 1, None)


async def test_usage_is_private_and_admins_see_everyone(studio: Studio) -> None:
    client, app = studio
    alice, bob = await sign_up(client, "alice@example.com"), await sign_up(client, "bob@example.com")
    await converse(client, alice.headers)
    await converse(client, alice.headers)
    await converse(client, bob.headers)
    await app.state.usage.flush()
    assert (await report(client, bob))["total"]["requests"] == 1
    assert (await report(client, alice))["total"]["requests"] == 2
    refused = await client.get("/api/v1/admin/usage", headers=bob.headers)
    assert refused.status_code == 403

    async with app.state.sessionmaker() as session:
        await session.execute(update(User).where(User.id == uuid.UUID(bob.id)).values(role="admin"))
        await session.commit()
    everyone = await report(client, bob, "/api/v1/admin/usage", group_by="user")
    assert [(i["email"], i["key"], i["requests"]) for i in everyone["items"]] == [
        ("alice@example.com", alice.id, 2),
        ("bob@example.com", bob.id, 1),
    ]
    only_alice = await report(client, bob, "/api/v1/admin/usage", user_id=alice.id, group_by="model")
    assert only_alice["total"]["requests"] == 2
    assert (await report(client, bob, "/api/v1/admin/usage"))["total"]["requests"] == 3


async def test_days_are_cut_in_the_configured_time_zone(studio: Studio) -> None:
    client, app = studio
    user = await sign_up(client)
    tokyo = UsageLedger(app.state.sessionmaker, timezone="Asia/Tokyo")
    late_evening_utc = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)  # 08:30 on the 11th in Tokyo
    tokyo.record(record(uuid.UUID(user.id), late_evening_utc))
    tokyo.record(record(uuid.UUID(user.id), late_evening_utc - timedelta(hours=10)))  # 22:30 on the 10th
    await tokyo.aclose()  # closing writes what is buffered
    days = await report(client, user, **{"from": "2026-03-01", "to": "2026-03-31"})
    assert [(i["key"], i["requests"]) for i in days["items"]] == [("2026-03-10", 1), ("2026-03-11", 1)]
    only_11th = await report(client, user, **{"from": "2026-03-11", "to": "2026-03-11"})
    assert only_11th["total"]["requests"] == 1


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"from": "2026-03-02", "to": "2026-03-01"}, "invalid_range"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "invalid_range"),
        ({"from": "yesterday"}, "validation_error"),
        ({"group_by": "week"}, "validation_error"),
        ({"group_by": "user"}, "validation_error"),  # only administrators group by user
    ],
)
async def test_bad_report_parameters(studio: Studio, params: dict[str, str], code: str) -> None:
    client, _ = studio
    user = await sign_up(client)
    response = await client.get("/api/v1/usage", headers=user.headers, params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


async def test_old_detail_rolls_up_into_daily_totals(studio: Studio) -> None:
    client, app = studio
    user, other = await sign_up(client), await sign_up(client)
    await create_key(client, user)
    key_id = uuid.UUID((await client.get("/api/v1/api-keys", headers=user.headers)).json()["items"][0]["id"])
    ledger: UsageLedger = app.state.usage
    now = datetime(2026, 6, 30, 12, tzinfo=UTC)
    old = now - timedelta(days=40)
    uid, oid = uuid.UUID(user.id), uuid.UUID(other.id)
    for hours in range(3):
        ledger.record(record(uid, old + timedelta(hours=hours), api_key_id=key_id))
    ledger.record(record(uid, old, status="failed", output_tokens=0, ttft_ms=None))
    ledger.record(record(uid, old, model="steady/x"))
    ledger.record(record(oid, old))
    ledger.record(record(uid, now - timedelta(days=1)))  # recent: stays as detail
    await ledger.flush()
    window = {"from": (old - timedelta(days=1)).date().isoformat(), "to": now.date().isoformat()}
    before_by_model = await report(client, user, group_by="model", **window)
    before_by_day = await report(client, user, **window)

    assert await ledger.rollup(now) == 6
    assert await ledger.rollup(now) == 0
    assert len(await events(app)) == 1
    assert await report(client, user, group_by="model", **window) == before_by_model
    assert await report(client, user, **window) == before_by_day
    async with app.state.sessionmaker() as session:
        daily = list((await session.scalars(select(UsageDaily))).all())
    groups = {(str(r.user_id), r.model, r.api_key_id): (r.requests, r.failures, r.ttft_count) for r in daily}
    assert groups == {
        (user.id, "openai/gpt-test", key_id): (3, 0, 3),
        (user.id, "openai/gpt-test", None): (1, 1, 0),
        (user.id, "steady/x", None): (1, 0, 1),
        (other.id, "openai/gpt-test", None): (1, 0, 1),
    }

    # A later roll-up of the same day adds to the existing totals instead of growing the table.
    ledger.record(record(uid, old + timedelta(hours=5), api_key_id=key_id))
    await ledger.flush()
    assert await ledger.rollup(now) == 1
    async with app.state.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(UsageDaily)) == 4
        merged = await session.scalar(select(UsageDaily.requests).where(UsageDaily.api_key_id == key_id))
    assert merged == 4
    assert (await report(client, user, group_by="model", **window))["total"]["requests"] == 7


async def test_pending_tokens_count_what_is_not_yet_written(studio: Studio) -> None:
    _, app = studio
    ledger = UsageLedger(app.state.sessionmaker, timezone="Asia/Tokyo")
    me, someone = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)  # the 11th in Tokyo
    ledger.record(record(me, at))  # 30 tokens today
    ledger.record(record(me, at - timedelta(days=3)))  # 30 earlier this month
    ledger.record(record(me, at - timedelta(days=15)))  # last month
    ledger.record(record(someone, at))
    assert ledger.pending_tokens(me, date(2026, 3, 11), date(2026, 3, 1)) == (30, 60)
    assert ledger.pending_tokens(uuid.uuid4(), date(2026, 3, 11), date(2026, 3, 1)) == (0, 0)


async def test_maintenance_runs_registered_jobs(studio: Studio) -> None:
    _, app = studio
    ledger = UsageLedger(app.state.sessionmaker)
    seen: list[datetime] = []

    async def job(now: datetime) -> None:
        seen.append(now)

    ledger.add_maintenance(job)
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    await ledger.maintain(moment)
    assert seen == [moment]


async def test_a_failed_write_keeps_the_records(studio: Studio, tmp_path: Path) -> None:
    client, app = studio
    user = await sign_up(client)
    empty = create_engine(f"sqlite+aiosqlite:///{tmp_path}/no-tables.db")
    try:
        broken = UsageLedger(create_sessionmaker(empty))
        broken.record(record(uuid.UUID(user.id), datetime.now(UTC)))
        with pytest.raises(Exception, match="usage_event"):
            await broken.flush()
        assert broken.pending == 1
    finally:
        await empty.dispose()
    working = UsageLedger(app.state.sessionmaker)
    working.start()
    working.record(record(uuid.UUID(user.id), datetime.now(UTC)))
    await working.aclose()
    assert working.pending == 0
    assert len(await events(app)) == 1


def test_price_table() -> None:
    prices = PriceTable(PRICES)
    assert prices.cost_nanousd("openai/gpt-test", 1_000_000, 0) == 1_000_000_000  # $1
    assert prices.cost_nanousd("openai/gpt-test", 1, 1) == 3000
    assert prices.cost_nanousd("steady/anything", 2, 2) == 2000
    assert prices.cost_nanousd("openai/other", 100, 100) == 0
    assert PriceTable().cost_nanousd("openai/gpt-test", 5, 5) == 0


def test_model_prices_setting(tmp_path: Path) -> None:
    base: dict[str, Any] = {"secret_key": TEST_SECRET_KEY, "data_dir": tmp_path, "_env_file": None}
    settings = load_settings(model_prices='{"openai/gpt-4o-mini": {"input": 0.15, "output": 0.6}}', **base)
    assert settings.model_prices == {"openai/gpt-4o-mini": {"input": 0.15, "output": 0.6}}
    for bad in ('{"a/b": {"input": -1}}', '{"a/b": {"inputs": 1}}', "not json", '["a/b"]'):
        with pytest.raises(ConfigError, match="MODEL_PRICES"):
            load_settings(model_prices=bad, **base)
