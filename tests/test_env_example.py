"""`.env.example` is the configuration reference: it must name every setting and parse as shipped."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from chatstudio.config import Settings

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def _documented_names() -> list[str]:
    names = []
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s?([A-Z][A-Z0-9_]+)=", line)
        if match:
            names.append(match.group(1))
    return names


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = set(_documented_names())
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - documented == set(), "settings missing from .env.example"
    assert documented - fields == set(), ".env.example names unknown settings"


def test_example_parses_to_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    text = EXAMPLE.read_text().replace("SECRET_KEY=\n", "SECRET_KEY=" + "k3y-" * 12 + "\n")
    (tmp_path / ".env").write_text(text)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    defaults = Settings(_env_file=None, secret_key="k3y-" * 12)  # type: ignore[call-arg]
    assert settings.model_dump() == defaults.model_dump()
    assert settings.max_upload_size == 10 * 1024 * 1024
    assert settings.smtp_from == "AI Chat Studio <no-reply@localhost>"
