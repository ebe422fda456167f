"""Run the real `chatstudio` console script in subprocesses: a clean environment, a free port,
wait-until-up bounded by a deadline, and a stop that always reaps the process.

Output goes to a log file, never to a pipe, so a chatty server can not block on a full pipe and
the log can be read while the process runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from chatstudio.config import Settings

# Every variable Settings reads, plus the ones the CLI reads itself: none may leak in from the developer's shell.
SETTINGS_VARIABLES = frozenset({name.upper() for name in Settings.model_fields} | {"CHATSTUDIO_ADMIN_PASSWORD"})
START_DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.05
# After a graceful shutdown uvicorn re-raises the signal it caught (so a supervisor sees it), except
# in multi-worker mode where the parent returns 0: both mean "stopped cleanly" when SIGTERM was sent.
GRACEFUL_EXIT_CODES = frozenset({0, -signal.SIGTERM})


def chatstudio_command(*args: str) -> list[str]:
    """The installed console script next to this interpreter, else the module run by this interpreter."""
    script = shutil.which("chatstudio", path=os.path.dirname(sys.executable))
    return [script, *args] if script else [sys.executable, "-m", "chatstudio.cli", *args]


def clean_env(**values: str) -> dict[str, str]:
    """os.environ without any chatstudio setting, plus `values` (names as the variables are spelled)."""
    env = {name: value for name, value in os.environ.items() if name.upper() not in SETTINGS_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out; free again once this returns (good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, cwd: Path, env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one short-lived command to completion and capture its output."""
    return subprocess.run(
        chatstudio_command(*args),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,  # never a terminal: no command may stop to prompt
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerExited(RuntimeError):
    """The server process ended before it answered."""


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_up(self, path: str = "/health", deadline: float = START_DEADLINE_SECONDS) -> httpx.Response:
        """Poll `path` until it answers 200; fail early if the process dies, fail at the deadline."""
        end = time.monotonic() + deadline
        with httpx.Client(base_url=self.base_url, timeout=2.0, trust_env=False) as client:
            while True:
                try:
                    response = client.get(path)
                    if response.status_code == 200:
                        return response
                except httpx.TransportError:
                    pass
                # Waiting on the process is the pause between polls, and notices an early exit at once.
                try:
                    code = self.process.wait(timeout=POLL_INTERVAL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
                else:
                    raise ServerExited(f"server exited with {code} before answering:\n{self.log()}")
                if time.monotonic() > end:
                    raise TimeoutError(f"server did not answer {path} within {deadline} s:\n{self.log()}")

    def wait_for_log(self, pattern: str, count: int = 1, deadline: float = START_DEADLINE_SECONDS) -> list[str]:
        """Poll the log until `pattern` (a regex) has matched `count` times; returns the matches."""
        regex = re.compile(pattern)
        end = time.monotonic() + deadline
        while True:
            found = regex.findall(self.log())
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                raise ServerExited(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > end:
                raise TimeoutError(f"{pattern!r} did not appear {count} times within {deadline} s:\n{self.log()}")
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=POLL_INTERVAL_SECONDS)

    def stop(self, deadline: float = STOP_DEADLINE_SECONDS) -> int:
        """SIGTERM and wait; SIGKILL if it does not end by the deadline. Returns the exit code."""
        return stop_process(self.process, deadline)


def stop_process(process: subprocess.Popen[bytes], deadline: float = STOP_DEADLINE_SECONDS) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def running_server(
    *args: str,
    cwd: Path,
    env: Mapping[str, str],
    port: int | None = None,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
) -> Iterator[ServerProcess]:
    """Start `chatstudio serve ARGS` on HOST/PORT (a free port unless given); always stopped on exit.

    The caller decides when it is up (`wait_until_up`), so start-up failures can be tested too.
    """
    port = port or free_port(host)
    log_path = log_path or cwd / f"server-{port}.log"
    full_env = {**env, "HOST": host, "PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            chatstudio_command("serve", *args),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, f"http://{host}:{port}", log_path)
    try:
        yield server
    finally:
        stop_process(process)


def child_pids(pid: int) -> set[int]:
    """Direct children of `pid`, read from /proc (Linux)."""
    children: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name (field 2) is in parentheses and may contain spaces; ppid follows the state field.
        fields = stat_line.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.add(int(entry.name))
    return children
