"""AI Chat Studio: a self-hosted backend for AI chat."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
# Written by the image build (deploy/Dockerfile) from `git describe`, since the image has no .git.
BUILD_FILE = _PACKAGE_DIR / "data" / "build.txt"


def _describe() -> str | None:
    """`git describe` of the checkout this package runs from, or of the build that made the image."""
    try:
        built = BUILD_FILE.read_text().strip()
    except OSError:
        built = ""
    if built:
        return built
    root = _PACKAGE_DIR.parent.parent  # src/chatstudio -> the repository
    if not (root / ".git").exists():
        return None  # an installed package: its version is the whole story
    try:
        result = subprocess.run(
            ["git", "describe", "--tags", "--always"],  # noqa: S607 - git from PATH, as a developer runs it
            cwd=root,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def compose_version(base: str, describe: str | None) -> str:
    """PEP 440: the package version, plus where the build sits in git as a local label.

    `v0.1.0` on 0.1.0 -> 0.1.0; `v0.1.0-5-gabc1234` -> 0.1.0+5.gabc1234; `abc1234` -> 0.1.0+gabc1234.
    """
    if not describe or describe.removeprefix("v") == base:
        return base
    match = re.fullmatch(r"v?(?P<tag>.+?)-(?P<ahead>\d+)-g(?P<sha>[0-9a-f]+)(?P<rest>.*)", describe)
    if match and match["tag"] == base:
        local = f"{match['ahead']}.g{match['sha']}{match['rest']}"
    elif re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?", describe):
        local = "g" + describe
    else:
        local = describe
    local = re.sub(r"[^A-Za-z0-9]+", ".", local).strip(".")
    return f"{base}+{local}" if local else base


try:
    _base = version("chatstudio")
except PackageNotFoundError:  # running from a source tree that was never installed
    _base = "0.0.0"

__version__ = compose_version(_base, _describe())
