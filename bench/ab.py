"""`python -m bench.ab --base REF`: one change's cost, measured side by side.

Two servers run at once on the server core: one from a git worktree of REF (the baseline), one from
this checkout, both on this checkout's virtualenv. They are loaded in turn, alternating which goes
first, for the given rounds of the same scenario (A: streamed /v1/chat/completions, B: the same
without streaming, C: chat turns over SSE, stored in the scratch PostgreSQL database), and the
median server CPU per request of each is printed with their ratio.
CPU per request moves far less from run to run than throughput does on a shared machine, so a few
percent show through where `make bench` would drown them.

    python -m bench.ab --base HEAD~1 --scenario B --concurrency 16 --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import procs, scenarios
from bench.__main__ import DEFAULT_ADMIN_URL, RESULTS, _admin, _url_for

ROOT = Path(__file__).resolve().parent.parent
S = TypeVar("S")


def _worktree(ref: str, into: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), ref], check=True)


def _drop_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


Server = tuple[str, procs.Process, scenarios.Target]


async def start_studio(
    cores: procs.Cores,
    env: dict[str, str],
    logs: Path,
    work: Path,
    name: str,
    scenario: str,
    concurrency: int,
    started: list[procs.Process],
) -> Server:
    """`chatstudio serve` with a signed-in user, aimed at the scenario's endpoint (A, B: its API key on
    /v1/chat/completions; C: its own conversations). The process goes into `started` before it is
    waited for, so the caller stops it even if it never answers."""
    port = procs.free_port()
    server = procs.chatstudio(cores, port, env, logs, cwd=work, name=name)
    started.append(server)
    await server.wait_http(port)
    api = scenarios.Api(port)
    _, token = await api.sign_in(f"{name}@bench.example.com")
    key = await scenarios.create_api_key(api, token)
    if scenario == "C":
        target = await scenarios.turn_target(api, token, concurrency)
    else:
        stream = scenario == "A"
        target = scenarios.completion_target(name, port, "/v1/chat/completions", "openai/gpt-bench", stream, key)
    return name, server, target


async def in_turn(servers: Sequence[S], rounds: int, measure: Callable[[S, bool], Awaitable[None]]) -> None:
    """`measure(server, counted)` for each server in turn, the order reversed every round so neither
    always goes first; round 0 warms them all up and is not counted."""
    for round_index in range(rounds + 1):
        for server in servers if round_index % 2 else servers[::-1]:
            await measure(server, round_index > 0)


async def load_in_turn(
    servers: list[Server], *, rounds: int, concurrency: int, duration: float
) -> dict[str, tuple[list[float], list[float]]]:
    """Each server's CPU per request (µs) and throughput per round, loaded one after another."""
    figures: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _, _ in servers}

    async def measure(entry: Server, counted: bool) -> None:
        name, server, target = entry
        before = server.cpu_seconds()
        result = await scenarios.load(target, concurrency, duration)
        if result.errors:
            raise RuntimeError(f"{name}: {result.errors} errors, first: {result.first_error}")
        if counted:
            cpu, rps = figures[name]
            cpu.append(1e6 * (server.cpu_seconds() - before) / max(1, result.total_ok))
            rps.append(result.rps)

    await in_turn(servers, rounds, measure)
    return figures


@dataclass(frozen=True)
class Scratch:
    cores: procs.Cores
    logs: Path
    work: Path
    upstream_port: int
    env: dict[str, str]  # a studio's environment: the migrated scratch database and the fake upstream


@asynccontextmanager
async def scratch(tool: str, postgres_url: str) -> AsyncIterator[Scratch]:
    """What a side-by-side tool runs in: this process pinned to the load core, a log folder, a work
    folder, the fake upstream, and a migrated scratch database, dropped at the end."""
    cores = procs.Cores.detect()
    cores.pin_self()
    logs = RESULTS / f"{tool}-{time.strftime('%Y%m%dT%H%M%S')}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"chatstudio-{tool}-"))
    upstream_port = procs.free_port()
    upstream = procs.fake_upstream(cores, upstream_port, logs)
    database = f"chatstudio_{tool}_{int(time.time())}"
    try:
        await upstream.wait_http(upstream_port, "/v1/models")
        await _admin(postgres_url, f"CREATE DATABASE {database}")
        env = scenarios.server_env(_url_for(postgres_url, database), upstream_port, work)
        procs.run_cli(["migrate"], env, cwd=work)
        yield Scratch(cores, logs, work, upstream_port, env)
    finally:
        upstream.stop()
        await _admin(postgres_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


async def compare(args: argparse.Namespace) -> dict[str, list[float]]:
    async with scratch("ab", args.postgres_url) as space:
        base = space.work / "base"
        _worktree(args.base, base)
        started: list[procs.Process] = []  # stopped at the end, also when one never became ready
        servers: list[Server] = []
        try:
            # The baseline's package shadows this checkout's (PYTHONPATH comes before site-packages).
            for name, extra in (("base", {"PYTHONPATH": str(base / "src")}), ("this", {})):
                env = {**space.env, **extra}
                servers.append(
                    await start_studio(
                        space.cores, env, space.logs, space.work, name, args.scenario, args.concurrency, started
                    )
                )
            figures = await load_in_turn(
                servers, rounds=args.rounds, concurrency=args.concurrency, duration=args.duration
            )
            return {name: cpu for name, (cpu, _) in figures.items()}
        finally:
            for server in started:
                server.stop()
            _drop_worktree(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the baseline (a commit, HEAD~1, a branch)")
    parser.add_argument("--scenario", choices=("A", "B", "C"), default="B")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--postgres-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    cpu = asyncio.run(compare(args))
    for name, values in cpu.items():
        runs = ", ".join(f"{value:.0f}" for value in values)
        print(f"{name:5} cpu us/request: median {statistics.median(values):7.1f}  ({runs})")
    print(f"this/base: {statistics.median(cpu['this']) / statistics.median(cpu['base']):.3f}")


if __name__ == "__main__":
    main()
