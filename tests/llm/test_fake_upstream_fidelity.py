"""The official SDKs as clients of the fake upstream: if their parsers accept it, it speaks the real protocols.

SDK retries are off (max_retries=0) so error cases answer at once instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import cohere
import httpx
import openai
import pytest

from bench.fake_upstream import expected_text
from tests.llm.support import KEY

MESSAGES: list[Any] = [{"role": "user", "content": "hello big world"}]


def test_openai_sync_non_streaming(upstream: str) -> None:
    with openai.OpenAI(base_url=f"{upstream}/v1", api_key=KEY, max_retries=0) as client:
        reply = client.chat.completions.create(model="tokens=5", messages=MESSAGES)
    assert reply.choices[0].message.content == expected_text(5)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 5)


def test_openai_sync_streaming_with_usage(upstream: str) -> None:
    with openai.OpenAI(base_url=f"{upstream}/v1", api_key=KEY, max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="tokens=6", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, max_tokens=4
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(4)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_openai_async_streaming_and_not(upstream: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{upstream}/v1", api_key=KEY, max_retries=0) as client:
        reply = await client.chat.completions.create(model="tokens=3", messages=MESSAGES)
        assert reply.choices[0].message.content == expected_text(3)
        stream = await client.chat.completions.create(
            model="tokens=3", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == expected_text(3)
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake-model", "fake-model-large"]


def test_openai_errors_are_recognised(upstream: str) -> None:
    with openai.OpenAI(base_url=f"{upstream}/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="fail=401", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="fail=429,retry_after=1", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="context_too_long", messages=MESSAGES)
        assert caught.value.code == "context_length_exceeded"
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="tokens=4,error_after=1", messages=MESSAGES, stream=True))


def test_anthropic_non_streaming(upstream: str) -> None:
    with anthropic.Anthropic(base_url=upstream, api_key=KEY, max_retries=0) as client:
        message = client.messages.create(model="tokens=5", max_tokens=100, messages=MESSAGES, system="be brief")
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text(5)
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 5)


def test_anthropic_streaming(upstream: str) -> None:
    with (
        anthropic.Anthropic(base_url=upstream, api_key=KEY, max_retries=0) as client,
        client.messages.stream(model="tokens=8", max_tokens=6, messages=MESSAGES) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected_text(6)
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 6)


async def anthropic_text(client: anthropic.AsyncAnthropic, model: str) -> str:
    async with client.messages.stream(model=model, max_tokens=50, messages=MESSAGES) as stream:
        return "".join([text async for text in stream.text_stream])


async def test_anthropic_async_streaming_and_errors(upstream: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=upstream, api_key=KEY, max_retries=0) as client:
        assert await anthropic_text(client, "tokens=3") == expected_text(3)
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(model="fail=429", max_tokens=5, messages=MESSAGES)
        with pytest.raises(anthropic.APIStatusError):  # the overloaded_error event mid-stream
            await anthropic_text(client, "tokens=5,error_after=2")
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake-model", "fake-model-large"]


@pytest.fixture
def cohere_client(upstream: str) -> Iterator[cohere.ClientV2]:
    # Our own httpx client, because ClientV2 has no close() of its own and would leak its sockets.
    with httpx.Client() as http:
        yield cohere.ClientV2(api_key=KEY, base_url=upstream, httpx_client=http)


def test_cohere_chat_and_chat_stream(cohere_client: cohere.ClientV2) -> None:
    client = cohere_client
    reply = client.chat(model="tokens=4", messages=MESSAGES)
    assert reply.message.content is not None
    assert reply.message.content[0].text == expected_text(4)  # type: ignore[union-attr]
    assert reply.finish_reason == "COMPLETE"
    assert reply.usage is not None
    assert reply.usage.tokens is not None
    assert (reply.usage.tokens.input_tokens, reply.usage.tokens.output_tokens) == (3, 4)

    text = ""
    end: Any = None
    for event in client.chat_stream(model="tokens=5", messages=MESSAGES, max_tokens=3):
        if event.type == "content-delta":
            assert event.delta is not None
            assert event.delta.message is not None
            assert event.delta.message.content is not None
            text += event.delta.message.content.text or ""
        elif event.type == "message-end":
            end = event.delta
    assert text == expected_text(3)
    assert end.finish_reason == "MAX_TOKENS"
    assert end.usage.billed_units.output_tokens == 3


def test_cohere_errors_are_recognised(cohere_client: cohere.ClientV2) -> None:
    client = cohere_client
    with pytest.raises(cohere.errors.UnauthorizedError):
        client.chat(model="fail=401", messages=MESSAGES, request_options={"max_retries": 0})
    with pytest.raises(cohere.errors.TooManyRequestsError):
        client.chat(model="fail=429", messages=MESSAGES, request_options={"max_retries": 0})
    listing = client.models.list(endpoint="chat")
    assert [m.name for m in listing.models] == ["fake-model", "fake-model-large"]
