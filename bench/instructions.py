"""`python -m bench.instructions`: user-space instructions per /v1 request, counted by valgrind.

The studio runs under `valgrind --tool=callgrind`; after a warm-up its counters are zeroed, a fixed
number of requests (scenario A: streamed, B: not) is sent at the given concurrency, the usage ledger
is given time to flush them, and the counters are dumped. Instruction counts repeat within about 1%
from run to run whatever else the machine does, so changes of a few percent show in one run, where
CPU seconds (`bench.ab`) need many rounds. Kernel time (syscalls) is not in the count.

    python -m bench.instructions --scenario A --concurrency 64 --requests 1500 [--base REF]

`--base` measures a git ref first (its package put before this checkout's, as `bench.ab` does).
The dump files (`callgrind_annotate --tree=caller FILE` shows who calls what) stay in the log folder.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
from pathlib import Path

from bench import loadgen, procs, scenarios
from bench.__main__ import DEFAULT_ADMIN_URL
from bench.ab import _drop_worktree, _worktree, scratch

WARM_UP = 300
LEDGER_FLUSH = 2.5  # seconds: longer than the ledger's default flush interval
IDLE = 5.0


def _callgrind(pid: int, flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def _dump(pid: int, out: Path) -> int:
    """Dumps the counters since the last zeroing and returns their total."""
    before = set(out.parent.glob(f"{out.name}.*"))
    _callgrind(pid, "-d")
    deadline = time.monotonic() + 30
    while not (new := set(out.parent.glob(f"{out.name}.*")) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    newest = max(new, key=lambda path: int(path.suffix[1:]))
    time.sleep(0.5)  # the file is written in one go, but give it a moment to be closed
    for line in newest.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {newest}")


async def _send(port: int, target: scenarios.Target, count: int, concurrency: int) -> None:
    # New connections every batch: uvicorn closes idle keep-alive connections after 5 s.
    connections = [await loadgen.connect("127.0.0.1", port) for _ in range(concurrency)]
    left = count

    async def worker(index: int, connection: loadgen._Connection) -> None:
        nonlocal left
        sequence = 0
        while left > 0:
            left -= 1
            response = await connection.send(target.request(index, sequence))
            sequence += 1
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")

    await asyncio.gather(*(worker(index, connection) for index, connection in enumerate(connections)))


async def measure(name: str, env: dict[str, str], args: argparse.Namespace, logs: Path, work: Path) -> float:
    port = procs.free_port()
    out = logs / f"{name}.callgrind"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    argv += [str(procs.VENV_BIN / "chatstudio"), "serve", "--port", str(port), "--workers", "1"]
    server = procs.Process(name, argv, env=env, log=logs / f"{name}.log", cwd=work)
    try:
        await server.wait_http(port, timeout=300)
        api = scenarios.Api(port)
        _, token = await api.sign_in(f"{name}@bench.example.com")
        key = await scenarios.create_api_key(api, token)
        stream = args.scenario == "A"
        target = scenarios.completion_target(name, port, "/v1/chat/completions", "openai/gpt-bench", stream, key)
        await _send(port, target, WARM_UP, args.concurrency)
        await asyncio.sleep(LEDGER_FLUSH)  # the warm-up's usage records are written outside the counts
        _callgrind(server.pid, "-z")
        started = time.monotonic()
        await asyncio.sleep(IDLE)
        idle_rate = _dump(server.pid, out) / (time.monotonic() - started)
        _callgrind(server.pid, "-z")
        started = time.monotonic()
        await _send(port, target, args.requests, args.concurrency)
        await asyncio.sleep(LEDGER_FLUSH)
        busy = _dump(server.pid, out)
        elapsed = time.monotonic() - started
        net = float(busy - idle_rate * elapsed) / int(args.requests)
        print(
            f"{name:5} {net / 1000:8.1f}k instructions/request"
            f"  (gross {busy / args.requests / 1000:.1f}k; idle {idle_rate / 1e6:.1f}M/s over {elapsed:.1f}s)"
        )
        return net
    finally:
        server.stop()


async def run(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (with callgrind_control) is needed: apt-get install valgrind")
    async with scratch("instructions", args.postgres_url) as space:
        figures: dict[str, float] = {}
        base = space.work / "base"
        if args.base:
            _worktree(args.base, base)
        try:
            if args.base:
                env = {**space.env, "PYTHONPATH": str(base / "src")}
                figures["base"] = await measure("base", env, args, space.logs, space.work)
            figures["this"] = await measure("this", space.env, args, space.logs, space.work)
        finally:
            if args.base:
                _drop_worktree(base)
        if args.base:
            print(f"this/base: {figures['this'] / figures['base']:.3f}")
        print(f"dumps in {space.logs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("A", "B"), default="A")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--base", help="git ref to measure first (a commit, HEAD~1, a branch)")
    parser.add_argument("--postgres-url", default=DEFAULT_ADMIN_URL)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
