"""Several uvicorn workers behind one port: every scrape shows the sum over all of them (multiprocess
mode), whichever worker answers; PROMETHEUS_PORT serves the same from the parent process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from bench.fake_upstream import FakeUpstream
from tests.e2e.conftest import server_env
from tests.helpers_proc import ServerProcess, free_port, running_server

pytestmark = pytest.mark.e2e

TOKEN = "workers-metrics-token-0123456789"
DEADLINE_SECONDS = 30.0  # guards a hung test, never a speed assertion


def values(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def total(text: str, name: str, **labels: str) -> float:
    return sum(v for found, v in values(text, name) if all(found.get(k) == x for k, x in labels.items()))


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("workers")
    with FakeUpstream() as upstream:
        env = server_env(upstream, work, WORKERS="2", METRICS_TOKEN=TOKEN, LOG_FILE=str(work / "app.jsonl"))
        with running_server("--migrate", cwd=work, env=env) as server:
            server.wait_until_up("/health")
            yield server


def scrape(server: ServerProcess) -> str:
    response = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False)
    assert response.status_code == 200, response.text
    return response.text


def pids_serving(server: ServerProcess) -> set[str]:
    return {labels["pid"] for labels, _ in values(scrape(server), "process_resident_memory_bytes")}


def test_every_scrape_sees_every_worker(workers: ServerProcess) -> None:
    route = "/api/v1/conversations"
    before = total(scrape(workers), "chatstudio_http_requests_total", route=route, status="401")
    with httpx.Client(base_url=workers.base_url, trust_env=False) as client:
        for _ in range(30):
            assert client.get(route).status_code == 401
    # Requests land on either worker; each scrape, answered by either, must count all 30.
    seen = {total(scrape(workers), "chatstudio_http_requests_total", route=route, status="401") for _ in range(6)}
    assert seen == {before + 30}
    assert len(pids_serving(workers)) == 2


async def test_open_websockets_are_summed_over_workers(workers: ServerProcess) -> None:
    url = workers.base_url.replace("http://", "ws://") + "/ws/chat"
    async with connect(url, proxy=None), connect(url, proxy=None):
        assert total(await asyncio.to_thread(scrape, workers), "chatstudio_websockets_open") == 2
    end = time.monotonic() + DEADLINE_SECONDS
    while total(await asyncio.to_thread(scrape, workers), "chatstudio_websockets_open") != 0:
        assert time.monotonic() < end, "the gauge never went back to 0"
        await asyncio.sleep(0.05)


def test_log_file_has_json_lines_from_the_workers(workers: ServerProcess) -> None:
    request_id = f"workers-{uuid.uuid4().hex[:8]}"
    httpx.get(f"{workers.base_url}/api/v1/conversations", headers={"X-Request-ID": request_id}, trust_env=False)
    log_file = Path(workers.log_path.parent / "app.jsonl")
    end = time.monotonic() + DEADLINE_SECONDS
    while True:
        entries = [json.loads(line) for line in log_file.read_text().splitlines()]
        mine = [e for e in entries if e.get("request_id") == request_id and e["logger"] == "chatstudio.access"]
        if mine:
            break
        assert time.monotonic() < end
        time.sleep(0.05)
    assert mine[0]["status"] == 401
    assert isinstance(mine[0]["pid"], int)
    # uvicorn's own lines are JSON too, through the same handlers
    assert any(e["logger"].startswith("uvicorn") for e in entries)


def test_prometheus_port_serves_all_workers(tmp_path: Path) -> None:
    metrics_port = free_port()
    with (
        FakeUpstream() as upstream,
        running_server(
            "--migrate",
            cwd=tmp_path,
            env=server_env(upstream, tmp_path, WORKERS="2", PROMETHEUS_PORT=str(metrics_port)),
        ) as server,
    ):
        server.wait_until_up("/health")
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"{server.base_url}/metrics").status_code == 404
            for _ in range(10):
                client.get(f"{server.base_url}/api/v1/conversations")
            text = client.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert total(text, "chatstudio_http_requests_total", route="/api/v1/conversations") == 10
