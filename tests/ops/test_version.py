"""The version shown by /health: the package version plus where the build sits in git."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import chatstudio
from chatstudio import compose_version
from tests.conftest import make_settings, running_app


@pytest.mark.parametrize(
    ("describe", "expected"),
    [
        (None, "0.1.0"),
        ("v0.1.0", "0.1.0"),
        ("0.1.0", "0.1.0"),
        ("v0.1.0-5-gabc1234", "0.1.0+5.gabc1234"),
        ("v0.1.0-5-gabc1234-dirty", "0.1.0+5.gabc1234.dirty"),
        ("abc1234", "0.1.0+gabc1234"),
        ("v0.0.9-12-gdeadbee", "0.1.0+v0.0.9.12.gdeadbee"),
    ],
)
def test_compose_version(describe: str | None, expected: str) -> None:
    assert compose_version("0.1.0", describe) == expected


def test_build_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = tmp_path / "build.txt"
    build.write_text("v0.1.0-3-gfeedbee\n")
    monkeypatch.setattr(chatstudio, "BUILD_FILE", build)
    assert chatstudio._describe() == "v0.1.0-3-gfeedbee"


async def test_health_reports_the_version(tmp_path: Path) -> None:
    from chatstudio import migrate

    url = f"sqlite+aiosqlite:///{tmp_path}/v.db"
    await asyncio.to_thread(migrate.upgrade, url)
    async with running_app(make_settings(url)) as (client, _):
        body = (await client.get("/health")).json()
    assert body["version"] == chatstudio.__version__
    assert body["version"].startswith(chatstudio._base)
