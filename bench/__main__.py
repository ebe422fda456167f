"""`python -m bench` (or `make bench`): every scenario in one invocation, a table, and a JSON file.

    python -m bench                      # A, B, C, memory, data (D too when LITELLM=1)
    python -m bench --only A,C --duration 5 --rounds 5
    python -m bench --fresh-data         # reload the 1,000,000-message corpus

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgresql+asyncpg://postgres@127.0.0.1:5432/test, used
only to create scratch databases). Results go to bench/results/<timestamp>.json, server logs next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench import data, procs, report, scenarios
from bench.dataset import asyncpg_dsn

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# v2: messages written in time order (v1 wrote whole conversations in random time order); a v1
# corpus is never reused for v2 figures.
DATA_DATABASE = "chatstudio_bench_data_v2"
ALL = ("A", "B", "C", "D", "memory", "data")


async def _admin(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _database_exists(admin_url: str, name: str) -> bool:
    connection = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


def _url_for(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _machine(cores: procs.Cores) -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "load_core": cores.load,
        "server_core": cores.server,
        "postgres": "unpinned (system service)",
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    selected = set(args.only.split(",")) if args.only else set(ALL) - ({"D"} if not args.litellm else set())
    cores = procs.Cores.detect()
    machine = _machine(cores)
    cores.pin_self()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = RESULTS / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chatstudio-bench-"))
    out: dict[str, Any] = {
        "started_at": stamp,
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "tokens": scenarios.TOKENS,
            "server_env_overrides": dict(args.server_env),
        },
        "scenarios": {},
    }
    upstream_port = procs.free_port()
    upstream = procs.fake_upstream(cores, upstream_port, logs)
    scratch = f"chatstudio_bench_{stamp.lower()}"
    database_url = _url_for(args.postgres_url, scratch)
    try:
        await upstream.wait_http(upstream_port, "/v1/models")
        await _admin(args.postgres_url, f"CREATE DATABASE {scratch}")
        env = {**scenarios.server_env(database_url, upstream_port, work), **dict(args.server_env)}
        procs.run_cli(["migrate"], env, cwd=work)
        if "memory" in selected:
            _say("memory: start-up, idle RSS, 1,000 idle WebSockets")
            out["scenarios"]["memory"] = await scenarios.memory(cores, env, logs, work)
        if selected & {"A", "B", "C", "D"}:
            await _load_scenarios(args, selected, cores, env, upstream_port, database_url, logs, work, out)
        if "data" in selected:
            await _data(args, cores, upstream_port, logs, work, out)
    finally:
        upstream.stop()
        if not args.keep:
            await _admin(args.postgres_url, f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)
    return out


async def _load_scenarios(
    args: argparse.Namespace,
    selected: set[str],
    cores: procs.Cores,
    env: dict[str, str],
    upstream_port: int,
    database_url: str,
    logs: Path,
    work: Path,
    out: dict[str, Any],
) -> None:
    port = procs.free_port()
    server = procs.chatstudio(cores, port, env, logs, cwd=work)
    litellm_server: procs.Process | None = None
    try:
        await server.wait_http(port)
        api = scenarios.Api(port)
        user_id, token = await api.sign_in("load@bench.example.com")
        if selected & {"A", "B", "D"}:
            key = await scenarios.create_api_key(api, token)
            why = await scenarios.openai_available(api, key)
            if why:
                for name in sorted(selected & {"A", "B", "D"}):
                    out["scenarios"][name] = {"skipped": f"not available: {why}"}
                    _say(f"{name}: not available ({why})")
            else:
                targets = [
                    scenarios.direct(upstream_port, True),
                    dataclasses.replace(
                        scenarios.completion_target("A", port, "/v1/chat/completions", "openai/gpt-bench", True, key),
                        cpu=server.cpu_seconds,
                    ),
                ]
                if "D" in selected:
                    from bench import litellm

                    litellm_port = procs.free_port()
                    litellm_server = litellm.start(cores, litellm_port, upstream_port, work, logs)
                    out["litellm_start_seconds"] = round(
                        await litellm_server.wait_http(litellm_port, "/health/liveliness", timeout=180), 2
                    )
                    out["litellm_version"] = litellm.version()
                    targets.append(
                        scenarios.completion_target(
                            "D", litellm_port, "/v1/chat/completions", litellm.MODEL, True, litellm.MASTER_KEY
                        )
                    )
                if selected & {"A", "D"}:
                    _say("A/D: streamed /v1/chat/completions, interleaved with the direct upstream")
                    found = await scenarios.interleave(targets, (1, 16, 64), args.rounds, args.duration)
                    out["scenarios"]["A"] = report.compare(found, "A", "direct")
                    if "D" in selected:
                        out["scenarios"]["D"] = report.compare(found, "D", "direct")
                if "B" in selected:
                    _say("B: the same without streaming")
                    plain = [
                        scenarios.direct(upstream_port, False),
                        dataclasses.replace(
                            scenarios.completion_target(
                                "B", port, "/v1/chat/completions", "openai/gpt-bench", False, key
                            ),
                            cpu=server.cpu_seconds,
                        ),
                    ]
                    found = await scenarios.interleave(plain, (1, 16, 64), args.rounds, args.duration)
                    out["scenarios"]["B"] = report.compare(found, "B", "direct")
        if "C" in selected:
            _say("C: chat turns over SSE, stored in PostgreSQL")
            concurrencies = (16, 64)
            turns = await scenarios.turn_target(api, token, max(concurrencies), cpu=server.cpu_seconds)
            # The database shares the machine's two cores: its CPU per turn bounds C as much as ours.
            database_cpu = procs.cpu_seconds_of("postgres")
            found = await scenarios.interleave(
                [scenarios.direct(upstream_port, True), turns], concurrencies, args.rounds, args.duration
            )
            database_cpu = procs.cpu_seconds_of("postgres") - database_cpu
            result = report.compare(found, "C", "direct")
            served = sum(r.total_ok for (name, _c), r in found.items() if name == "C")
            stored = await scenarios.stored_turns(database_url, user_id)
            result["turns_answered"] = served
            result["stored"] = stored
            completed = stored.get("assistant/completed", 0)
            # None when no `postgres` process runs here (a database elsewhere).
            local = completed and database_cpu > 0
            result["postgres_cpu_us_per_turn"] = round(1e6 * database_cpu / completed) if local else None
            # Every turn the client saw end with `done` is stored, complete, exactly once per side. The
            # server may store more: turns whose client timed out still finish (and are kept).
            result["every_message_stored"] = (
                completed >= served
                and stored.get("user/completed", 0) == completed
                and sum(stored.values()) == 2 * completed
            )
            out["scenarios"]["C"] = result
    finally:
        server.stop()
        if litellm_server is not None:
            litellm_server.stop()


async def _data(
    args: argparse.Namespace, cores: procs.Cores, upstream_port: int, logs: Path, work: Path, out: dict[str, Any]
) -> None:
    url = _url_for(args.postgres_url, DATA_DATABASE)
    if args.fresh_data:
        await _admin(args.postgres_url, f"DROP DATABASE IF EXISTS {DATA_DATABASE} WITH (FORCE)")
    if not await _database_exists(args.postgres_url, DATA_DATABASE):
        await _admin(args.postgres_url, f"CREATE DATABASE {DATA_DATABASE}")
    env = {**scenarios.server_env(url, upstream_port, work), **dict(args.server_env)}
    procs.run_cli(["migrate"], env, cwd=work)
    port = procs.free_port()
    server = procs.chatstudio(cores, port, env, logs, cwd=work, name="chatstudio-data")
    try:
        await server.wait_http(port)
        api = scenarios.Api(port)
        _say(f"data: 10,000 conversations / 1,000,000 messages in {DATA_DATABASE} (kept for the next run)")
        token, info = await data.ensure_corpus(api, url, fresh=args.fresh_data)
        _say(f"data: corpus {info['loaded']}; timing the endpoints one request at a time")
        out["scenarios"]["data"] = {"corpus": info, **await data.measure(api, token, args.duration)}
    finally:
        server.stop()


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def _say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--only", help=f"comma list of {','.join(ALL)}")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--litellm", action="store_true", default=os.environ.get("LITELLM", "") not in ("", "0"))
    parser.add_argument("--fresh-data", action="store_true", help="reload the data corpus")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        type=_pair,
        metavar="NAME=VALUE",
        help="override a server setting (recorded in the JSON; the default is the shipped configuration)",
    )
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL))
    args = parser.parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop  # the generator must not be what limits the baseline
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        out = runner.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{out['started_at']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(report.table(out))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
