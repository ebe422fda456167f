"""`python -m bench.floor`: where a relayed completion's server CPU goes, measured side by side.

Three servers share the server core and are loaded in turn with the same request (scenario A, a
streamed /v1/chat/completions, or B, the same without streaming), alternating their order each round:

- uvicorn: plain uvicorn answering with a canned copy of the direct upstream's reply (the server's
  own cost: one request in, a response of the same size out);
- relay: plain uvicorn forwarding to the fake upstream over the studio's upstream pool (what any
  relay on this stack pays);
- studio: `chatstudio serve` exactly as `make bench` runs it.

Each one's median server CPU per request is printed; the studio's excess over `relay` is what its
own layers cost (edge, authentication, limits, routing, retries, accounting, metrics, logs).

    python -m bench.floor --scenario A --concurrency 64 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

from bench import loadgen, procs, scenarios
from bench.__main__ import DEFAULT_ADMIN_URL
from bench.ab import Server, load_in_turn, scratch, start_studio

_UVICORN = ["-m", "uvicorn", "--no-server-header", "--no-access-log", "--log-level", "warning"]


def _bare(cores: procs.Cores, app: str, port: int, env: dict[str, str], logs: Path) -> procs.Process:
    argv = [*cores.prefix(cores.server), sys.executable, *_UVICORN, f"bench.floor_apps:{app}", "--port", str(port)]
    return procs.Process(app, argv, env=env, log=logs / f"{app}.log")


async def measure(args: argparse.Namespace) -> dict[str, tuple[list[float], list[float]]]:
    async with scratch("floor", args.postgres_url) as space:
        stream = args.scenario == "A"
        direct = scenarios.direct(space.upstream_port, stream)
        reply = await loadgen.fetch("127.0.0.1", space.upstream_port, direct.request(0, 0))
        canned = space.work / "reply"
        canned.write_bytes(reply.body)
        bare_env = {
            "CANNED_FILE": str(canned),
            "UPSTREAM_BASE": space.env["OPENAI_BASE_URL"],
            "UPSTREAM_KEY": space.env["OPENAI_API_KEY"],
        }
        started: list[procs.Process] = []  # stopped at the end, also when one never became ready
        servers: list[Server] = []
        try:
            for app in ("canned", "relay"):
                port = procs.free_port()
                server = _bare(space.cores, app, port, bare_env, space.logs)
                started.append(server)
                await server.wait_http(port, "/")
                target = scenarios.completion_target(app, port, "/v1/chat/completions", "gpt-bench", stream, None)
                servers.append(("uvicorn" if app == "canned" else app, server, target))
            servers.append(
                await start_studio(
                    space.cores, space.env, space.logs, space.work, "studio", args.scenario, args.concurrency, started
                )
            )
            return await load_in_turn(servers, rounds=args.rounds, concurrency=args.concurrency, duration=args.duration)
        finally:
            for server in started:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("A", "B"), default="A")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--postgres-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    medians = {name: statistics.median(cpu) for name, (cpu, _) in figures.items()}
    for name, (cpu, rps) in figures.items():
        runs = ", ".join(f"{value:.0f}" for value in cpu)
        rate = statistics.median(rps)
        print(f"{name:8} cpu us/request: median {medians[name]:6.0f}  rps median {rate:7.0f}  ({runs})")
    print(f"studio over relay: {medians['studio'] - medians['relay']:.0f} us/request")


if __name__ == "__main__":
    main()
