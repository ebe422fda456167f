"""Processes under test: start pinned to a core, wait until they answer, read their memory, stop them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import fetch, http_request

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Cores:
    """Where the machine has two cores or more: the load side (generator and fake upstream) on one,
    the server under test on another, so neither steals the other's CPU."""

    load: int | None
    server: int | None

    @classmethod
    def detect(cls) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) >= 2 and shutil.which("taskset"):
            return cls(available[0], available[1])
        return cls(None, None)

    def pin_self(self) -> None:
        if self.load is not None:
            os.sched_setaffinity(0, {self.load})

    def prefix(self, core: int | None) -> list[str]:
        return ["taskset", "-c", str(core)] if core is not None else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log
        self.log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kb(self) -> int:
        """Resident set of the process (the uvicorn worker itself when WORKERS=1)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"{self.name} has no VmRSS")

    def cpu_seconds(self) -> float:
        """User and system CPU of the process so far (the uvicorn worker itself when WORKERS=1)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def wait_http(self, port: int, path: str = "/health", timeout: float = 60) -> float:
        """Seconds from spawn until `path` answers 200 (polled every 5 ms)."""
        raw = http_request("GET", path, host=f"127.0.0.1:{port}")
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
            with suppress(OSError, TimeoutError, ConnectionError, ValueError):
                response = await fetch("127.0.0.1", port, raw, timeout=2)
                if response.status == 200:
                    return time.perf_counter() - self.started
            await asyncio.sleep(0.005)
        raise RuntimeError(f"{self.name} did not answer {path} within {timeout} s; see {self.log_path}")

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        if self.log is not subprocess.DEVNULL and hasattr(self.log, "close"):
            self.log.close()


def fake_upstream(cores: Cores, port: int, logs: Path) -> Process:
    argv = [*cores.prefix(cores.load), sys.executable, "-m", "bench.fake_upstream", "--port", str(port)]
    return Process("fake upstream", argv, log=logs / "fake_upstream.log")


def chatstudio(
    cores: Cores, port: int, env: dict[str, str], logs: Path, *, cwd: Path, name: str = "chatstudio"
) -> Process:
    """`chatstudio serve`, one worker; `cwd` away from the repository, so no developer's .env is read."""
    argv = [*cores.prefix(cores.server), str(VENV_BIN / "chatstudio"), "serve", "--port", str(port), "--workers", "1"]
    return Process(name, argv, env=env, log=logs / f"{name}.log", cwd=cwd)


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(
        [str(VENV_BIN / "chatstudio"), *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"chatstudio {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-2000:]}")


def cpu_seconds_of(command: str) -> float:
    """User and system CPU so far of every process named `command`, with that of their children
    which have exited: for PostgreSQL, whose backends come and go, the postmaster's count of the
    exited ones. Processes that exit without a parent waiting for them are not counted."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                name, fields = stat.read().split(" (", 1)[1].rsplit(") ", 1)
        except OSError:  # gone meanwhile
            continue
        if name == command:
            values = fields.split()
            total += sum(int(value) for value in values[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")
