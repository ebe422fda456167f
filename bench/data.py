"""The `data` scenario: API latency for one user with 10,000 conversations and 1,000,000 messages.

Requests go one at a time (concurrency 1), so the figures are the server's and the database's time
per request, not queueing. Each family cycles through many different pages and queries.
"""

from __future__ import annotations

import random
import time
import urllib.parse
import uuid
from typing import Any

from bench import dataset, loadgen
from bench.loadgen import Result, http_request
from bench.scenarios import Api

EMAIL = "data@bench.example.com"
CONVERSATIONS = 10_000
MESSAGES = 1_000_000


async def ensure_corpus(api: Api, database_url: str, *, fresh: bool) -> tuple[str, dict[str, Any]]:
    """Sign the data user in and load the corpus unless this database already holds it."""
    user_id, token = await api.sign_in(EMAIL)
    have = await dataset.counts(database_url, uuid.UUID(user_id))
    info: dict[str, Any] = {"conversations": CONVERSATIONS, "messages": MESSAGES}
    if have == (CONVERSATIONS, MESSAGES) and not fresh:
        info["loaded"] = "reused"
        return token, info
    if have != (0, 0):
        raise RuntimeError(f"the data user already has {have} conversations/messages; use a fresh database")
    began = time.perf_counter()
    await dataset.load(database_url, uuid.UUID(user_id), conversations=CONVERSATIONS, messages=MESSAGES)
    info["loaded"] = f"{time.perf_counter() - began:.0f} s (COPY, then VACUUM ANALYZE)"
    return token, info


def list_path(cursor: str | None) -> str:
    return "/api/v1/conversations?limit=50" + (f"&cursor={cursor}" if cursor else "")


async def list_pages(api: Api, token: str) -> tuple[list[str | None], list[str]]:
    """Every cursor of the conversation list (200 pages of 50) and the ids of all conversations."""
    cursors: list[str | None] = [None]
    ids: list[str] = []
    cursor: str | None = None
    while True:
        status, body = await api.call("GET", list_path(cursor), token=token)
        if status != 200:
            raise RuntimeError(f"list: HTTP {status} {body}")
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return cursors, ids
        cursors.append(cursor)


async def measure(api: Api, token: str, duration: float) -> dict[str, Any]:
    rng = random.Random(5)
    host = f"127.0.0.1:{api.port}"
    auth = {"Authorization": f"Bearer {token}"}
    cursors, ids = await list_pages(api, token)
    second_pages = []
    for cid in rng.sample(ids, 100):
        _, body = await api.call("GET", f"/api/v1/conversations/{cid}/messages?limit=50", token=token)
        if body.get("next_cursor"):
            second_pages.append(f"/api/v1/conversations/{cid}/messages?limit=50&cursor={body['next_cursor']}")

    def get(path: str) -> bytes:
        return http_request("GET", path, host=host, headers=auth)

    families: dict[str, list[bytes]] = {
        "conversation list (first page)": [get("/api/v1/conversations?limit=50")],
        "conversation list (any page)": [get(list_path(cursor)) for cursor in cursors],
        "message page (first)": [get(f"/api/v1/conversations/{cid}/messages?limit=50") for cid in rng.sample(ids, 500)],
        "message page (second)": [get(path) for path in second_pages],
    }
    by_band: dict[str, list[bytes]] = {}
    for sort in ("relevance", "recent"):
        for band, query in dataset.search_queries():
            q = urllib.parse.quote(query)
            by_band.setdefault(f"search {sort}: {band}", []).append(get(f"/api/v1/search?q={q}&sort={sort}"))
    results = {
        name: await _sequential(api.port, requests, duration) for name, requests in {**families, **by_band}.items()
    }
    out: dict[str, Any] = {name: result.summary() for name, result in results.items()}
    for sort in ("relevance", "recent"):
        merged = Result()  # equal time per band, not per query
        for name, result in results.items():
            if name.startswith(f"search {sort}:"):
                merged.merge(result)
        out[f"search {sort} (all queries)"] = merged.summary()
    return out


async def _sequential(port: int, requests: list[bytes], duration: float) -> Result:
    def pick(_connection: int, sequence: int) -> bytes:
        return requests[sequence % len(requests)]

    return await loadgen.run(
        "127.0.0.1", port, pick, concurrency=1, duration=duration, warmup=0.2, expect_in_body=b'"items"'
    )
