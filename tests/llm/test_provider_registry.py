"""The registry: which providers exist, how ids resolve, fallbacks, cool-downs and model discovery."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from bench.fake_upstream import expected_text
from chatstudio.config import ConfigError, Settings
from chatstudio.llm.base import (
    ChatRequest,
    ContextTooLong,
    ModelInfo,
    ProviderNotConfigured,
    ProviderUnavailable,
    StreamEvent,
    UnknownModel,
    collect,
)
from chatstudio.llm.openai import is_openai_chat_model
from chatstudio.llm.registry import ProviderRegistry, build_registry
from chatstudio.llm.retry import RetryPolicy
from tests.llm.support import KEY, chat, drain, text_of

NO_PROVIDERS: dict[str, Any] = {
    "openai_api_key": None,
    "anthropic_api_key": None,
    "cohere_api_key": None,
    "huggingface_api_key": None,
    "openai_base_url": "https://api.openai.com/v1",
    "openai_compatible_endpoints": [],
    "model_aliases": {},
    "model_fallbacks": {},
    "local_model_enabled": False,
    "local_model_path": None,
}


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{**NO_PROVIDERS, **overrides})


async def no_sleep(delay: float) -> None:
    return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_settings(upstream: str, **overrides: Any) -> Settings:
    return settings(
        openai_api_key=KEY,
        openai_base_url=f"{upstream}/v1",
        anthropic_api_key=KEY,
        anthropic_base_url=upstream,
        cohere_api_key=KEY,
        cohere_base_url=upstream,
        **overrides,
    )


@pytest_asyncio.fixture
async def registry(upstream: str) -> AsyncIterator[ProviderRegistry]:
    built = build_registry(
        fake_settings(
            upstream,
            model_aliases={"fast": "anthropic/tokens=3"},
            model_fallbacks={
                "openai/fail=500": ["cohere/fail=503", "anthropic/tokens=3"],
                "openai/tokens=6,cut_after=2": ["anthropic/tokens=3"],
                "openai/context_too_long": ["anthropic/tokens=3"],
            },
        ),
        retry=RetryPolicy(max_retries=1, sleep=no_sleep),
    )
    yield built
    await built.aclose()


def test_only_configured_providers_exist(tmp_path: Any) -> None:
    assert build_registry(settings()).providers == {}
    assert set(build_registry(settings(local_model_enabled=True)).providers) == {"local"}
    assert set(build_registry(settings(openai_base_url="http://127.0.0.1:11434/v1")).providers) == {"openai"}
    everything = settings(
        openai_api_key="k1",
        anthropic_api_key="k2",
        cohere_api_key="k3",
        huggingface_api_key="k4",
        openai_compatible_endpoints=[
            {"name": "ollama", "base_url": "http://127.0.0.1:11434/v1", "models": ["llama3.2"]}
        ],
        local_model_enabled=True,
    )
    assert list(build_registry(everything).providers) == [
        "openai",
        "anthropic",
        "cohere",
        "huggingface",
        "ollama",
        "local",
    ]


@pytest.mark.parametrize(
    "endpoint",
    [
        {"name": "Bad Name", "base_url": "http://x"},
        {"name": "openai", "base_url": "http://x"},
        {"name": "ollama", "base_url": "ftp://x"},
        {"name": "ollama", "base_url": "http://x", "models": "llama3"},
        {"base_url": "http://x"},
    ],
)
def test_bad_compatible_endpoints_are_config_errors(endpoint: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_registry(settings(openai_compatible_endpoints=[endpoint]))


def test_alias_must_name_provider_and_model() -> None:
    with pytest.raises(ConfigError):
        build_registry(settings(model_aliases={"fast": "gpt-4o"}))


def test_resolve() -> None:
    registry = build_registry(
        settings(
            openai_api_key="k",
            huggingface_api_key="h",
            local_model_enabled=True,
            model_aliases={"fast": "openai/gpt-4o-mini", "ghost": "cohere/command-r"},
        )
    )
    provider, model = registry.resolve("openai/gpt-4o")
    assert (provider.name, model) == ("openai", "gpt-4o")
    provider, model = registry.resolve("fast")
    assert (provider.name, model) == ("openai", "gpt-4o-mini")
    provider, model = registry.resolve("huggingface/meta-llama/Llama-3.1-8B-Instruct")
    assert (provider.name, model) == ("huggingface", "meta-llama/Llama-3.1-8B-Instruct")
    provider, model = registry.resolve("local/smollm2-135m")
    assert (provider.name, model) == ("local", "smollm2-135m")
    for unknown in ("gpt-4o", "openai/", "/gpt-4o", "mystery/model", "local/llama-70b", ""):
        with pytest.raises(UnknownModel):
            registry.resolve(unknown)
    for unconfigured in ("anthropic/claude-sonnet-4", "ghost"):
        with pytest.raises(ProviderNotConfigured) as caught:
            registry.resolve(unconfigured)
        assert caught.value.status_code == 422


def test_context_window() -> None:
    registry = build_registry(
        settings(
            openai_api_key="k",
            local_model_enabled=True,
            local_model_context=4096,
            model_aliases={"big": "anthropic/claude-x"},
        )
    )
    assert registry.context_window("openai/gpt-4o-mini") == 128_000
    assert registry.context_window("local/smollm2-135m") == 4096
    assert registry.context_window("big") == 200_000
    assert registry.context_window("openai/some-new-model") == 8192


async def test_stream_through_the_registry_uses_the_resolved_model(registry: ProviderRegistry) -> None:
    text, usage, finish = await collect(registry.stream("fast", chat("ignored-by-registry")))
    assert text == expected_text(3)
    assert usage is not None
    assert finish is not None


async def test_falls_back_when_the_first_provider_fails_before_any_token(registry: ProviderRegistry) -> None:
    events, error = await drain(registry.stream("openai/fail=500", chat("x")))
    assert error is None
    assert text_of(events) == expected_text(3)


async def test_no_fallback_after_the_first_token(registry: ProviderRegistry) -> None:
    events, error = await drain(registry.stream("openai/tokens=6,cut_after=2", chat("x")))
    assert text_of(events) == expected_text(2)
    assert isinstance(error, ProviderUnavailable)


async def test_no_fallback_for_the_requests_own_fault(registry: ProviderRegistry) -> None:
    _, error = await drain(registry.stream("openai/context_too_long", chat("x")))
    assert isinstance(error, ContextTooLong)


class Recorded:
    """An observer that keeps what the registry told it about each provider call."""

    def __init__(self, calls: list[tuple[str, str, list[str], str | None]], provider: str, model: str) -> None:
        self.entry: tuple[str, str, list[str], str | None] = (provider, model, [], None)
        self.calls = calls
        self.ended = False

    def event(self, event: StreamEvent) -> None:
        assert not self.ended
        self.entry[2].append(type(event).__name__)

    def end(self, error: BaseException | None = None) -> None:
        assert not self.ended, "a call ends once"
        self.ended = True
        self.calls.append((*self.entry[:3], type(error).__name__ if error is not None else None))


async def test_the_observer_sees_every_call_its_events_and_how_each_ended(registry: ProviderRegistry) -> None:
    calls: list[tuple[str, str, list[str], str | None]] = []
    registry.observe = lambda provider, model: Recorded(calls, provider, model)

    events, error = await drain(registry.stream("openai/fail=500", chat("x")))
    assert error is None
    kinds = [type(event).__name__ for event in events]
    assert calls == [
        ("openai", "fail=500", [], "ProviderUnavailable"),
        ("cohere", "fail=503", [], "ProviderUnavailable"),
        ("anthropic", "tokens=3", kinds, None),
    ]

    calls.clear()
    _, error = await drain(registry.stream("openai/tokens=6,cut_after=2", chat("x")))
    assert isinstance(error, ProviderUnavailable)
    assert [(provider, ended) for provider, _, _, ended in calls] == [("openai", "ProviderUnavailable")]

    calls.clear()
    stream = registry.stream("fast", chat("x"))
    await anext(stream)
    await stream.aclose()  # the consumer stopped reading after the first event
    assert [(provider, seen, ended) for provider, _, seen, ended in calls] == [
        ("anthropic", ["TextDelta"], "GeneratorExit")
    ]


async def test_unknown_and_unconfigured_models_fail_on_first_iteration(registry: ProviderRegistry) -> None:
    _, error = await drain(registry.stream("nope", chat("x")))
    assert isinstance(error, UnknownModel)
    _, error = await drain(registry.stream("huggingface/x", chat("x")))
    assert isinstance(error, ProviderNotConfigured)


async def test_cool_down_skips_a_failing_provider(upstream: str) -> None:
    clock = Clock()
    key = uuid.uuid4()
    flaky = f"openai/tokens=2,fail_times=1,key={key}"
    registry = ProviderRegistry(
        build_registry(fake_settings(upstream)).providers.values(),
        fallbacks={"openai/tokens=2": ["anthropic/tokens=3"]},
        retry=RetryPolicy(max_retries=0, sleep=no_sleep),
        cooldown_seconds=30,
        failure_threshold=3,
        clock=clock,
    )
    try:
        for _ in range(3):
            _, error = await drain(registry.stream("openai/fail=500", chat("x")))
            assert isinstance(error, ProviderUnavailable)
        assert registry.cooling_down("openai") == 30
        # Cooling down: no call reaches openai; with a fallback it answers, without one we fail fast.
        assert (await collect(registry.stream("openai/tokens=2", chat("x"))))[0] == expected_text(3)
        _, error = await drain(registry.stream(flaky, chat("x")))
        assert isinstance(error, ProviderUnavailable)
        assert "cooling down" in error.message
        assert error.retry_after == 30
        clock.now += 31
        # Cool-down over: the upstream sees this key for the first time, so it fails once...
        _, error = await drain(registry.stream(flaky, chat("x")))
        assert isinstance(error, ProviderUnavailable)
        assert "cooling down" not in error.message
        # ...which re-opens the breaker at once, since the failure streak was never broken.
        assert registry.cooling_down("openai") == 30
        clock.now += 31
        text, _, _ = await collect(registry.stream(flaky, chat("x")))
        assert text == expected_text(2)
        assert registry.cooling_down("openai") == 0
    finally:
        await registry.aclose()


async def test_list_models_with_unreachable_providers(upstream: str, closed_port_url: str) -> None:
    registry = build_registry(
        settings(
            # openai hangs on /models; only the discovery timeout gets us out
            openai_api_key=KEY,
            openai_base_url=f"{upstream}/k/hang/v1",
            openai_default_model="gpt-4o-mini",
            cohere_api_key=KEY,
            cohere_base_url=upstream,
            openai_compatible_endpoints=[
                {"name": "ollama", "base_url": f"{closed_port_url}/v1", "models": ["llama3.2"]}
            ],
            local_model_enabled=True,
            model_aliases={"fast": "cohere/fake-model", "ghost": "anthropic/claude-x"},
            model_discovery_timeout=0.3,
            provider_read_timeout=30,
        )
    )
    try:
        listing = dict(await registry.list_models())
    finally:
        await registry.aclose()
    assert set(listing) == {
        "openai/gpt-4o-mini",
        "cohere/fake-model",
        "cohere/fake-model-large",
        "ollama/llama3.2",
        "local/smollm2-135m",
        "fast",
    }
    assert listing["cohere/fake-model"].context_window == 128_000
    assert listing["fast"].provider == "cohere"
    assert listing["fast"].id == "fake-model"
    assert registry.context_window("fast") == 128_000


class Listing:
    """A provider whose discovery is counted; streaming is never used."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError

    async def list_models(self) -> list[ModelInfo]:
        self.calls += 1
        return [ModelInfo(id="m", provider=self.name)]

    async def aclose(self) -> None:
        return None


async def test_list_models_is_cached_for_the_ttl() -> None:
    clock = Clock()
    provider = Listing()
    registry = ProviderRegistry([provider], discovery_ttl=60, clock=clock)
    first = await registry.list_models()
    assert first == [("counting/m", ModelInfo(id="m", provider="counting"))]
    assert await registry.list_models() == first
    assert provider.calls == 1
    clock.now += 61
    assert await registry.list_models() == first
    assert provider.calls == 2


def test_only_chat_models_are_listed_from_api_openai_com() -> None:
    chat_models = ["gpt-4o-mini", "gpt-4.1", "o3-mini", "chatgpt-4o-latest"]
    other = ["text-embedding-3-small", "gpt-4o-mini-tts", "dall-e-3", "whisper-1", "gpt-4o-realtime-preview"]
    assert [m for m in chat_models + other if is_openai_chat_model(m)] == chat_models
