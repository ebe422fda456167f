"""`GET /metrics`: Prometheus text with requests by route template, provider calls, pool use, limits."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chatstudio.config import Settings
from chatstudio.observability import metrics
from tests.chat.conftest import PROVIDER_KEY
from tests.conftest import sign_up
from tests.ops.conftest import ops_app, sample

METRICS_TOKEN = "metrics-token-0123456789-abcdef"


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_metrics_are_prometheus_text_with_route_templates(ops_settings: Settings) -> None:
    route = "/api/v1/conversations/{conversation_id}"
    before = sample("chatstudio_http_requests_total", method="GET", route=route, status="404")
    async with ops_app(ops_settings) as (client, _):
        user = await sign_up(client)
        for _ in range(3):
            missing = await client.get(f"/api/v1/conversations/{uuid.uuid4()}", headers=user.headers)
            assert missing.status_code == 404
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = families(response.text)
    for name in (
        "chatstudio_http_requests",
        "chatstudio_http_request_duration_seconds",
        "chatstudio_http_requests_in_flight",
        "chatstudio_websockets_open",
        "chatstudio_db_pool_connections_in_use",
        "chatstudio_db_pool_connections_max",
        "process_resident_memory_bytes",
    ):
        assert name in found, name
    # the template, never the raw path: three different ids are one series
    assert sample("chatstudio_http_requests_total", method="GET", route=route, status="404") == before + 3
    assert "/api/v1/conversations/" + "0" not in response.text
    assert sample("chatstudio_http_request_duration_seconds_count", method="GET", route=route) >= 3


async def test_unmatched_paths_share_one_label(ops_settings: Settings) -> None:
    before = sample("chatstudio_http_requests_total", method="GET", route="<unmatched>", status="404")
    async with ops_app(ops_settings) as (client, _):
        for n in range(3):
            assert (await client.get(f"/no/such/path/{n}")).status_code == 404
    assert sample("chatstudio_http_requests_total", method="GET", route="<unmatched>", status="404") == before + 3


async def test_metrics_token_guards_the_endpoint(ops_settings: Settings) -> None:
    settings = Settings.model_validate({**ops_settings.model_dump(), "metrics_token": METRICS_TOKEN})
    settings.resolve_secret_key()
    async with ops_app(settings) as (client, _):
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-token-0123456789"})
        right = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert METRICS_TOKEN not in missing.text + wrong.text
    assert right.status_code == 200
    assert "chatstudio_http_requests_total" in right.text


async def test_prometheus_port_takes_metrics_off_the_main_port(ops_settings: Settings) -> None:
    settings = Settings.model_validate({**ops_settings.model_dump(), "prometheus_port": 9999})
    settings.resolve_secret_key()
    async with ops_app(settings) as (client, _):
        response = await client.get("/metrics")
    assert response.status_code == 404


async def test_provider_calls_tokens_and_errors(ops_settings: Settings) -> None:
    ok_calls = sample("chatstudio_provider_requests_total", provider="openai", model="gpt-test", outcome="ok")
    output = sample("chatstudio_provider_tokens_total", provider="openai", model="gpt-test", direction="output")
    ttft = sample("chatstudio_provider_time_to_first_token_seconds_count", provider="openai", model="gpt-test")
    failed = sample("chatstudio_provider_errors_total", provider="broken", model="x", code="provider_unavailable")
    async with ops_app(ops_settings) as (client, _):
        user = await sign_up(client)
        conversation = (await client.post("/api/v1/conversations", json={}, headers=user.headers)).json()["id"]
        url = f"/api/v1/conversations/{conversation}/messages"
        done = await client.post(url, json={"content": "hello there", "model": "openai/gpt-test"}, headers=user.headers)
        assert done.status_code == 200, done.text
        broken = await client.post(url, json={"content": "hello", "model": "broken/x"}, headers=user.headers)
        assert broken.status_code == 503
        scraped = (await client.get("/metrics")).text
    assert sample("chatstudio_provider_requests_total", provider="openai", model="gpt-test", outcome="ok") == (
        ok_calls + 1
    )
    assert sample("chatstudio_provider_tokens_total", provider="openai", model="gpt-test", direction="output") == (
        output + 16
    )
    assert sample("chatstudio_provider_time_to_first_token_seconds_count", provider="openai", model="gpt-test") == (
        ttft + 1
    )
    assert sample("chatstudio_provider_errors_total", provider="broken", model="x", code="provider_unavailable") == (
        failed + 1
    )
    assert PROVIDER_KEY not in scraped


def test_a_provider_call_counts_its_first_token_its_totals_and_how_it_ended() -> None:
    from chatstudio.llm.base import Finish, ProviderBusy, TextDelta, Usage

    def calls(outcome: str) -> float:
        return sample("chatstudio_provider_requests_total", provider="p", model="m", outcome=outcome)

    ttft = sample("chatstudio_provider_time_to_first_token_seconds_count", provider="p", model="m")
    output = sample("chatstudio_provider_tokens_total", provider="p", model="m", direction="output")
    ok, cancelled, failed = calls("ok"), calls("cancelled"), calls("error")
    busy = sample("chatstudio_provider_errors_total", provider="p", model="m", code="provider_busy")
    internal = sample("chatstudio_provider_errors_total", provider="p", model="m", code="internal")

    call = metrics.ProviderCall("p", "m")
    for event in (TextDelta("a"), TextDelta("b"), Usage(3, 2), Finish("stop")):
        call.event(event)
    call.end()
    assert sample("chatstudio_provider_time_to_first_token_seconds_count", provider="p", model="m") == ttft + 1
    assert sample("chatstudio_provider_tokens_total", provider="p", model="m", direction="output") == output + 2
    assert calls("ok") == ok + 1

    metrics.ProviderCall("p", "m").end(ProviderBusy(provider="p"))
    metrics.ProviderCall("p", "m").end(GeneratorExit())
    metrics.ProviderCall("p", "m").end(RuntimeError("bug"))
    assert sample("chatstudio_provider_errors_total", provider="p", model="m", code="provider_busy") == busy + 1
    assert sample("chatstudio_provider_errors_total", provider="p", model="m", code="internal") == internal + 1
    assert (calls("ok"), calls("cancelled"), calls("error")) == (ok + 1, cancelled + 1, failed + 2)


async def test_rate_limit_rejections_are_counted(ops_settings: Settings) -> None:
    settings = Settings.model_validate({**ops_settings.model_dump(), "rate_limit_per_minute": 2})
    settings.resolve_secret_key()
    before = sample("chatstudio_rate_limit_rejections_total", code="rate_limited", transport="http")
    async with ops_app(settings) as (client, _):
        statuses = [(await client.get("/api/v1/conversations")).status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429]
    assert sample("chatstudio_rate_limit_rejections_total", code="rate_limited", transport="http") == before + 2


async def test_pool_capacity_and_in_use_return_to_rest(ops_settings: Settings) -> None:
    settings = Settings.model_validate({**ops_settings.model_dump(), "db_pool_size": 4, "db_max_overflow": 3})
    settings.resolve_secret_key()
    capacity = sample("chatstudio_db_pool_connections_max")
    in_use = sample("chatstudio_db_pool_connections_in_use")
    async with ops_app(settings) as (client, _):
        assert sample("chatstudio_db_pool_connections_max") == capacity + 7
        user = await sign_up(client)
        assert (await client.get("/api/v1/conversations", headers=user.headers)).status_code == 200
        assert sample("chatstudio_db_pool_connections_in_use") == in_use
    assert sample("chatstudio_db_pool_connections_max") == capacity


def test_label_values_are_bounded() -> None:
    assert metrics.label("ollama/llama3.2:1b") == "ollama/llama3.2:1b"
    assert metrics.label("a b\n{c}") == "a_b__c_"
    assert len(metrics.label("x" * 500)) == metrics.MAX_LABEL_LENGTH
    assert metrics.label("") == "unknown"
