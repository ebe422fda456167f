"""Shared fixtures for the provider tests: the fake upstream on a background thread, a refused port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bench.fake_upstream import FakeUpstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """Base URL (no trailing slash, no /v1) of the fake upstream, shared by the whole session."""
    with FakeUpstream() as base_url:
        yield base_url


@pytest.fixture(scope="session")
def closed_port_url() -> str:
    """A URL nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
