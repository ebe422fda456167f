"""The retry layer against real failures from the fake upstream; delays are recorded, never slept."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio

from bench.fake_upstream import expected_text
from chatstudio.llm.base import (
    ChatRequest,
    Finish,
    ProviderAuthError,
    ProviderBusy,
    ProviderUnavailable,
    StreamEvent,
    TextDelta,
    Usage,
)
from chatstudio.llm.openai import OpenAIProvider
from chatstudio.llm.retry import RetryPolicy
from tests.llm.support import KEY, chat, drain, text_of


class Recorder:
    """Stands in for asyncio.sleep: remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest_asyncio.fixture
async def provider(upstream: str) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(base_url=f"{upstream}/v1", api_key=KEY)
    yield p
    await p.aclose()


def counted(provider: OpenAIProvider, request: ChatRequest, attempts: list[int]) -> AsyncIterator[StreamEvent]:
    attempts.append(1)
    return provider.stream(request)


async def test_fails_twice_then_yields_the_whole_text_exactly_once(provider: OpenAIProvider) -> None:
    sleep = Recorder()
    policy = RetryPolicy(max_retries=2, sleep=sleep, jitter=lambda: 0.0)
    request = chat(f"tokens=5,fail_times=2,key={uuid.uuid4()}")
    events, error = await drain(policy.stream(lambda: provider.stream(request), provider="openai"))
    assert error is None
    assert text_of(events) == expected_text(5)
    assert events[-2:] == [Usage(3, 5), Finish("stop")]
    assert sleep.delays == [0.25, 0.5]  # equal jitter at its floor: half of 0.5 * 2**attempt


async def test_retry_after_is_honoured(provider: OpenAIProvider) -> None:
    sleep = Recorder()
    policy = RetryPolicy(max_retries=3, sleep=sleep)
    request = chat(f"tokens=2,fail=429,retry_after=2,fail_times=2,key={uuid.uuid4()}")
    text_events, error = await drain(policy.stream(lambda: provider.stream(request)))
    assert error is None
    assert text_of(text_events) == expected_text(2)
    assert sleep.delays == [2.0, 2.0]


async def test_gives_up_after_max_retries_with_the_last_error(provider: OpenAIProvider) -> None:
    sleep = Recorder()
    policy = RetryPolicy(max_retries=2, sleep=sleep)
    _, error = await drain(policy.stream(lambda: provider.stream(chat("fail=429,retry_after=1"))))
    assert isinstance(error, ProviderBusy)
    assert error.retry_after == 1.0
    assert sleep.delays == [1.0, 1.0]


async def test_long_retry_after_is_passed_to_the_client_not_waited(provider: OpenAIProvider) -> None:
    sleep = Recorder()
    policy = RetryPolicy(max_retries=2, max_retry_after=10, sleep=sleep)
    _, error = await drain(policy.stream(lambda: provider.stream(chat("fail=429,retry_after=60"))))
    assert isinstance(error, ProviderBusy)
    assert error.retry_after == 60.0
    assert sleep.delays == []


async def test_a_wait_past_the_deadline_is_not_taken(provider: OpenAIProvider) -> None:
    sleep = Recorder()
    policy = RetryPolicy(max_retries=2, deadline=5, max_retry_after=100, sleep=sleep)
    _, error = await drain(policy.stream(lambda: provider.stream(chat("fail=503,retry_after=30"))))
    assert isinstance(error, ProviderUnavailable)
    assert sleep.delays == []


async def test_auth_errors_are_not_retried(provider: OpenAIProvider) -> None:
    sleep = Recorder()
    attempts: list[int] = []
    policy = RetryPolicy(max_retries=2, sleep=sleep)
    _, error = await drain(policy.stream(lambda: counted(provider, chat("fail=401"), attempts)))
    assert isinstance(error, ProviderAuthError)
    assert len(attempts) == 1
    assert sleep.delays == []


async def test_never_retries_after_the_first_event(provider: OpenAIProvider) -> None:
    sleep = Recorder()
    attempts: list[int] = []
    policy = RetryPolicy(max_retries=3, sleep=sleep)
    events, error = await drain(policy.stream(lambda: counted(provider, chat("tokens=6,cut_after=2"), attempts)))
    assert text_of(events) == expected_text(2)
    assert isinstance(error, ProviderUnavailable)
    assert len(attempts) == 1
    assert sleep.delays == []


async def test_deadline_ends_a_stalled_stream(upstream: str) -> None:
    # The read timeout alone would wait 30 s; the 0.2 s deadline must win.
    provider = OpenAIProvider(base_url=f"{upstream}/v1", api_key=KEY, read_timeout=30)
    try:
        sleep = Recorder()
        policy = RetryPolicy(max_retries=5, deadline=0.2, sleep=sleep)
        events, error = await drain(policy.stream(lambda: provider.stream(chat("tokens=4,hang_after=1"))))
        assert text_of(events) == expected_text(1)
        assert isinstance(error, ProviderUnavailable)
        assert "deadline" in error.message
        _, error = await drain(policy.stream(lambda: provider.stream(chat("hang"))))
        assert isinstance(error, ProviderUnavailable)
        assert "deadline" in error.message
        assert sleep.delays == []
    finally:
        await provider.aclose()


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    low = RetryPolicy(max_retries=10, base_delay=0.5, max_delay=4, jitter=lambda: 0.0)
    high = RetryPolicy(max_retries=10, base_delay=0.5, max_delay=4, jitter=lambda: 1.0)
    error = ProviderUnavailable()
    far = 1e12
    assert [low.delay(n, error, far) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert [high.delay(n, error, far) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert low.delay(10, error, far) is None


async def test_closing_early_closes_the_provider_stream(provider: OpenAIProvider) -> None:
    policy = RetryPolicy(sleep=Recorder())
    events = policy.stream(lambda: provider.stream(chat("tokens=50")))
    first = await anext(events)
    assert isinstance(first, TextDelta)
    assert first.text.startswith("tok0")
    await events.aclose()
    # The pooled connection was released, so the next request works on the same session.
    events2, error = await drain(policy.stream(lambda: provider.stream(chat("tokens=2"))))
    assert error is None
    assert text_of(events2) == expected_text(2)
