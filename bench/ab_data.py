"""`python -m bench.ab_data --base REF --family messages`: one change's cost on a data endpoint,
measured side by side on the data scenario's corpus.

Two servers run at once on the server core against the corpus database of `make bench` (which must
have been loaded by one run of it): one from a git worktree of REF, one from this checkout. They are
loaded in turn, one request at a time as the data scenario does, alternating which goes first, and
each one's median server CPU per request and latency percentiles are printed. Families:

- `messages`: the first message page of 1,000 conversations;
- `list`: every page of the conversation list;
- `relevance` / `recent`: the search queries of the data scenario's bands, or `--queries a,b,c`.

    python -m bench.ab_data --base HEAD~1 --family messages --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import urllib.parse
from dataclasses import dataclass, field

from bench import data, dataset, loadgen, procs, scenarios
from bench.__main__ import DATA_DATABASE, DEFAULT_ADMIN_URL, _database_exists, _url_for
from bench.ab import _drop_worktree, _worktree, in_turn, scratch

FAMILIES = ("messages", "list", "relevance", "recent")


@dataclass
class Figures:
    cpu_us: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)


def _search_paths(sort: str, queries: list[str] | None) -> list[str]:
    chosen = queries or [query for _, query in dataset.search_queries()]
    return [f"/api/v1/search?q={urllib.parse.quote(query)}&sort={sort}" for query in chosen]


async def measure(args: argparse.Namespace) -> dict[str, Figures]:
    if not await _database_exists(args.postgres_url, DATA_DATABASE):
        raise SystemExit(f"{DATA_DATABASE} does not exist: run `python -m bench --only data` once first")
    database_url = _url_for(args.postgres_url, DATA_DATABASE)
    async with scratch("abdata", args.postgres_url) as space:
        base = space.work / "base"
        _worktree(args.base, base)
        servers: list[tuple[str, procs.Process, int]] = []
        try:
            for name, extra in (("base", {"PYTHONPATH": str(base / "src")}), ("this", {})):
                env = {**scenarios.server_env(database_url, space.upstream_port, space.work), **extra}
                port = procs.free_port()
                server = procs.chatstudio(space.cores, port, env, space.logs, cwd=space.work, name=name)
                servers.append((name, server, port))
                await server.wait_http(port)
            api = scenarios.Api(servers[0][2])
            _, token = await api.sign_in(data.EMAIL)
            if args.family in ("relevance", "recent"):
                paths = _search_paths(args.family, args.queries.split(",") if args.queries else None)
            else:
                cursors, ids = await data.list_pages(api, token)
                if args.family == "list":
                    paths = [data.list_path(cursor) for cursor in cursors]
                else:
                    paths = [f"/api/v1/conversations/{cid}/messages?limit=50" for cid in ids[:1000]]
            return await _load_in_turn(servers, paths, token, rounds=args.rounds, duration=args.duration)
        finally:
            for _, server, _ in servers:
                server.stop()
            _drop_worktree(base)


async def _load_in_turn(
    servers: list[tuple[str, procs.Process, int]], paths: list[str], token: str, *, rounds: int, duration: float
) -> dict[str, Figures]:
    figures = {name: Figures() for name, _, _ in servers}
    headers = {"Authorization": f"Bearer {token}"}

    async def measure(entry: tuple[str, procs.Process, int], counted: bool) -> None:
        name, server, port = entry
        requests = [loadgen.http_request("GET", path, host=f"127.0.0.1:{port}", headers=headers) for path in paths]

        def pick(_connection: int, sequence: int) -> bytes:
            return requests[sequence % len(requests)]

        before = server.cpu_seconds()
        result = await loadgen.run(
            "127.0.0.1", port, pick, concurrency=1, duration=duration, warmup=0.2, expect_in_body=b'"items"'
        )
        if result.errors:
            raise RuntimeError(f"{name}: {result.errors} errors, first: {result.first_error}")
        if counted:
            summary = result.summary()
            figures[name].cpu_us.append(1e6 * (server.cpu_seconds() - before) / max(1, result.total_ok))
            figures[name].p50_ms.append(summary["latency_ms"]["p50"])
            figures[name].p99_ms.append(summary["latency_ms"]["p99"])

    await in_turn(servers, rounds, measure)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the baseline (a commit, HEAD~1, a branch)")
    parser.add_argument("--family", choices=FAMILIES, default="messages")
    parser.add_argument("--queries", help="comma list of search queries (default: the data scenario's)")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--postgres-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    for name, got in figures.items():
        runs = ", ".join(f"{value:.0f}" for value in got.cpu_us)
        print(
            f"{name:5} cpu us/request: median {statistics.median(got.cpu_us):7.0f} ({runs})  "
            f"p50 {statistics.median(got.p50_ms):.2f} ms  p99 {statistics.median(got.p99_ms):.2f} ms"
        )
    ratio = statistics.median(figures["this"].cpu_us) / statistics.median(figures["base"].cpu_us)
    print(f"this/base cpu: {ratio:.3f}")


if __name__ == "__main__":
    main()
