"""One contract, every remote adapter, each against its own wire protocol served by the fake upstream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from bench.fake_upstream import count_words, expected_text
from chatstudio.llm.anthropic import AnthropicProvider
from chatstudio.llm.base import (
    ChatProvider,
    ContextTooLong,
    Finish,
    ProviderAuthError,
    ProviderBusy,
    ProviderUnavailable,
    TextDelta,
    Usage,
    collect,
)
from chatstudio.llm.cohere import CohereProvider
from chatstudio.llm.huggingface import HuggingFaceProvider
from chatstudio.llm.openai import OpenAIProvider
from tests.llm.support import KEY, PROMPT, chat, drain, text_of

Factory = Callable[[str, float], ChatProvider]

ADAPTERS: dict[str, Factory] = {
    "openai": lambda base, timeout: OpenAIProvider(
        base_url=f"{base}/v1", api_key=KEY, organization="org-test", read_timeout=timeout
    ),
    "anthropic": lambda base, timeout: AnthropicProvider(base_url=base, api_key=KEY, read_timeout=timeout),
    "cohere": lambda base, timeout: CohereProvider(base_url=base, api_key=KEY, read_timeout=timeout),
    "huggingface": lambda base, timeout: HuggingFaceProvider(base_url=f"{base}/v1", api_key=KEY, read_timeout=timeout),
    "ollama": lambda base, timeout: OpenAIProvider(name="ollama", base_url=f"{base}/v1", read_timeout=timeout),
}

pytestmark = pytest.mark.parametrize("adapter", list(ADAPTERS))


@asynccontextmanager
async def opened(adapter: str, base: str, read_timeout: float = 10.0) -> AsyncIterator[ChatProvider]:
    provider = ADAPTERS[adapter](base, read_timeout)
    try:
        yield provider
    finally:
        await provider.aclose()


async def test_streams_exact_text_then_usage_then_finish(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        assert isinstance(provider, ChatProvider)
        events, error = await drain(provider.stream(chat("fake-tokens=7", system="be brief")))
    assert error is None
    assert text_of(events) == expected_text(7)
    assert all(isinstance(e, TextDelta) for e in events[:-2])
    assert events[-2:] == [
        Usage(input_tokens=count_words([{"content": PROMPT}], "be brief"), output_tokens=7),
        Finish("stop"),
    ]


async def test_max_tokens_reports_length(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        text, usage, finish = await collect(provider.stream(chat("tokens=10", max_tokens=3)))
    assert text == expected_text(3)
    assert usage == Usage(3, 3)
    assert finish == Finish("length")


async def test_connection_is_reused_across_requests(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        for tokens in (1, 2, 3):
            text, _, _ = await collect(provider.stream(chat(f"tokens={tokens}")))
            assert text == expected_text(tokens)


async def test_401_is_an_auth_error_and_the_key_is_never_repeated(
    adapter: str, upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with opened(adapter, upstream) as provider:
        events, error = await drain(provider.stream(chat("fail=401")))
    assert events == []
    assert isinstance(error, ProviderAuthError)
    assert error.provider == provider.name
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert any(record.levelno >= logging.ERROR for record in caplog.records), "the operator must be told"
    assert KEY not in caplog.text


async def test_403_is_an_auth_error(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        _, error = await drain(provider.stream(chat("fail=403")))
    assert isinstance(error, ProviderAuthError)


async def test_429_is_busy_with_retry_after(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        _, error = await drain(provider.stream(chat("fail=429,retry_after=7")))
    assert isinstance(error, ProviderBusy)
    assert error.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 503, 529])
async def test_5xx_is_unavailable(adapter: str, upstream: str, status: int) -> None:
    async with opened(adapter, upstream) as provider:
        _, error = await drain(provider.stream(chat(f"fail={status}")))
    assert isinstance(error, ProviderUnavailable)


async def test_no_answer_is_unavailable_after_the_read_timeout(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream, read_timeout=0.2) as provider:
        _, error = await drain(provider.stream(chat("hang")))
    assert isinstance(error, ProviderUnavailable)


async def test_stall_mid_stream_is_unavailable_after_the_deltas(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream, read_timeout=0.2) as provider:
        events, error = await drain(provider.stream(chat("tokens=6,hang_after=2")))
    assert text_of(events) == expected_text(2)
    assert isinstance(error, ProviderUnavailable)


async def test_cut_connection_yields_deltas_then_unavailable(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        events, error = await drain(provider.stream(chat("tokens=8,cut_after=5")))
    assert text_of(events) == expected_text(5)
    assert all(isinstance(e, TextDelta) for e in events)
    assert isinstance(error, ProviderUnavailable)


async def test_body_ending_without_the_final_event_is_unavailable(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        events, error = await drain(provider.stream(chat("tokens=8,end_after=4")))
    assert text_of(events) == expected_text(4)
    assert isinstance(error, ProviderUnavailable)


async def test_malformed_chunk_is_unavailable(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        events, error = await drain(provider.stream(chat("tokens=8,malformed_after=3")))
    assert text_of(events) == expected_text(3)
    assert isinstance(error, ProviderUnavailable)


async def test_error_event_mid_stream_is_unavailable(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        events, error = await drain(provider.stream(chat("tokens=8,error_after=2")))
    assert text_of(events) == expected_text(2)
    assert isinstance(error, ProviderUnavailable)


async def test_context_too_long(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        _, error = await drain(provider.stream(chat("context_too_long")))
    assert isinstance(error, ContextTooLong)
    assert error.status_code == 422


async def test_refused_connection_is_unavailable(adapter: str, closed_port_url: str) -> None:
    async with opened(adapter, closed_port_url) as provider:
        _, error = await drain(provider.stream(chat("tokens=1")))
    assert isinstance(error, ProviderUnavailable)


async def test_the_key_appears_in_no_error_or_log(
    adapter: str, upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    faults = ["fail=401", "fail=400", "fail=429", "fail=500", "context_too_long", "tokens=4,cut_after=1"]
    async with opened(adapter, upstream) as provider:
        for fault in faults:
            _, error = await drain(provider.stream(chat(fault)))
            assert error is not None
            assert KEY not in str(error)
    assert KEY not in caplog.text


async def test_list_models(adapter: str, upstream: str) -> None:
    async with opened(adapter, upstream) as provider:
        models = await provider.list_models()
    assert {m.id for m in models} == {"fake-model", "fake-model-large"}
    assert {m.provider for m in models} == {provider.name}


async def test_a_burst_is_one_delta_and_spaced_tokens_are_several(adapter: str, upstream: str) -> None:
    """Tokens that arrive in one network read go on as one delta (no per-token cost downstream);
    tokens that arrive apart go on as they come, so streaming is as live as the upstream."""
    async with opened(adapter, upstream) as provider:
        burst, _ = await drain(provider.stream(chat("tokens=20")))
        spaced, _ = await drain(provider.stream(chat("tokens=5,delay_ms=30")))
    burst_deltas = [e for e in burst if isinstance(e, TextDelta)]
    spaced_deltas = [e for e in spaced if isinstance(e, TextDelta)]
    assert "".join(e.text for e in burst_deltas) == expected_text(20)
    assert len(burst_deltas) < 20
    assert "".join(e.text for e in spaced_deltas) == expected_text(5)
    assert len(spaced_deltas) >= 2  # 30 ms apart: separate reads (a slow machine may join a few)
