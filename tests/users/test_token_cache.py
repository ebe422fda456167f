"""Verified access tokens are remembered per process: never past their expiry, never for another key."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest

from chatstudio import security
from chatstudio.errors import InvalidToken

KEY = "k" * 64
OTHER_KEY = "o" * 64


def _token(lifetime: timedelta = timedelta(minutes=15)) -> str:
    token, _ = security.create_access_token(
        user_id=uuid.uuid4(), session_id=uuid.uuid4(), key=KEY, algorithm="HS256", lifetime=lifetime
    )
    return token


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token(timedelta(minutes=1))
    claims = security.decode_access_token(token, key=KEY, algorithm="HS256")
    assert security.decode_access_token(token, key=KEY, algorithm="HS256") == claims
    later = time.time() + 60 + security.TOKEN_LEEWAY_SECONDS + 1
    monkeypatch.setattr(security.time, "time", lambda: later)
    with pytest.raises(InvalidToken, match="expired"):
        security.decode_access_token(token, key=KEY, algorithm="HS256")


def test_a_remembered_token_is_not_accepted_under_another_key_or_algorithm() -> None:
    token = _token()
    security.decode_access_token(token, key=KEY, algorithm="HS256")
    with pytest.raises(InvalidToken):
        security.decode_access_token(token, key=OTHER_KEY, algorithm="HS256")
    with pytest.raises(InvalidToken):
        security.decode_access_token(token, key=KEY, algorithm="HS512")
    # ... and the failed attempts did not evict or replace what was verified.
    assert security.decode_access_token(token, key=KEY, algorithm="HS256").jti


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "MAX_VERIFIED_TOKENS", 3)
    for _ in range(10):
        security.decode_access_token(_token(), key=KEY, algorithm="HS256")
    assert len(security._verified) <= 3
