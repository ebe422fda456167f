"""The shared pieces in isolation: SSE framing, Retry-After, and the status-to-error boundary."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from unittest.mock import Mock

import aiohttp
import pytest

from chatstudio.llm.base import (
    ContextTooLong,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBusy,
    ProviderUnavailable,
)
from chatstudio.llm.http import (
    SSEEvent,
    SSEReader,
    encode_json,
    error_from_kind,
    error_from_status,
    parse_retry_after,
)


async def events_of(*chunks: bytes) -> list[SSEEvent]:
    reader = aiohttp.StreamReader(Mock(), 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return [event async for event in SSEReader(reader)]


async def test_sse_framing_across_arbitrary_chunk_boundaries() -> None:
    body = 'event: a\ndata: {"x": 1}\n\n: comment\ndata: first\ndata: second\n\ndata: é€\r\n\r\n'.encode()
    expected = [SSEEvent("a", '{"x": 1}'), SSEEvent("", "first\nsecond"), SSEEvent("", "é€")]
    assert await events_of(body) == expected
    # Byte by byte, splitting multi-byte characters too.
    assert await events_of(*(body[i : i + 1] for i in range(len(body)))) == expected


async def test_sse_last_event_without_blank_line_is_kept_but_half_lines_are_dropped() -> None:
    assert await events_of(b"data: [DONE]\n") == [SSEEvent("", "[DONE]")]
    assert await events_of(b'data: whole\n\ndata: {"half') == [SSEEvent("", "whole")]


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < (parse_retry_after({"retry-after": future}) or 0) <= 120
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=120), usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"error": {"message": "bad key sk-SECRET-123"}}, ProviderAuthError),
        (403, {"message": "forbidden"}, ProviderAuthError),
        (429, {"error": {"code": "insufficient_quota", "message": "quota"}}, ProviderAuthError),
        (429, {"message": "slow down"}, ProviderBusy),
        (400, {"error": {"code": "context_length_exceeded", "message": "too long"}}, ContextTooLong),
        (
            400,
            {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long"}},
            ContextTooLong,
        ),
        (400, {"message": "too many tokens: total number of tokens"}, ContextTooLong),
        (
            422,
            {
                "error": "Input validation error: inputs tokens + max_new_tokens must be <= 4096",
                "error_type": "validation",
            },
            ProviderBadRequest,
        ),
        (404, {"error": {"message": "model not found"}}, ProviderBadRequest),
        (500, {"error": {"message": "boom"}}, ProviderUnavailable),
        (529, {"type": "error", "error": {"type": "overloaded_error"}}, ProviderUnavailable),
        (502, "<html>bad gateway</html>", ProviderUnavailable),
    ],
)
def test_status_mapping(status: int, body: object, expected: type) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    error = error_from_status("p", status, {"retry-after": "4"}, raw, ("sk-SECRET-123",))
    assert type(error) is expected
    assert error.provider == "p"
    assert "sk-SECRET-123" not in error.message
    if expected is ProviderBusy:
        assert error.retry_after == 4.0


def test_midstream_error_kinds() -> None:
    assert isinstance(error_from_kind("p", "overloaded_error", "Overloaded", ()), ProviderUnavailable)
    assert isinstance(error_from_kind("p", "rate_limit_error", "", ()), ProviderBusy)
    assert isinstance(error_from_kind("p", "invalid_request_error", "prompt is too long", ()), ContextTooLong)
    assert isinstance(error_from_kind("p", "authentication_error", "", ()), ProviderAuthError)
    message = error_from_kind("p", "invalid_request_error", "bad key sk-SECRET-123", ("sk-SECRET-123",)).message
    assert "sk-SECRET-123" not in message


def test_request_bodies_are_json_even_where_the_fast_encoder_refuses() -> None:
    assert json.loads(encode_json({"model": "m", "temperature": 0.5, "messages": [{"content": "é"}]})) == {
        "model": "m",
        "temperature": 0.5,
        "messages": [{"content": "é"}],
    }
    assert json.loads(encode_json({"seed": 2**70})) == {"seed": 2**70}  # past 64 bits: orjson refuses
