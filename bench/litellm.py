"""Scenario D's comparison: the LiteLLM proxy, in its own virtualenv, on the same fake upstream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import procs
from bench.scenarios import TOKENS

VENV = Path(__file__).resolve().parent / ".litellm-venv"
REQUIREMENT = "litellm[proxy]"
MODEL = "gpt-bench"
# Like our API keys, requests to LiteLLM are authenticated (its master key; no database needed).
MASTER_KEY = "sk-bench-master-" + "0123456789abcdef" * 2


def install() -> Path:
    """The `litellm` command, installed from the package registry with pip on first use."""
    command = VENV / "bin" / "litellm"
    if command.exists():
        return command
    print(f"installing {REQUIREMENT} into {VENV} (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, REQUIREMENT], check=True)
    return command


def version() -> str:
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def start(cores: procs.Cores, port: int, upstream_port: int, workdir: Path, logs: Path) -> procs.Process:
    command = install()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/k/tokens={TOKENS}/v1\n"
        "      api_key: sk-bench-upstream\n"
    )
    argv = [
        *cores.prefix(cores.server),
        str(command),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    # No network at start-up (the price map ships with the package) and no telemetry.
    env = {
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    return procs.Process("litellm", argv, env=env, log=logs / "litellm.log", cwd=workdir)
