"""Images in the provider contract: which models see them and how each wire format carries them."""

from __future__ import annotations

import base64

import pytest

from chatstudio.llm.anthropic import AnthropicProvider
from chatstudio.llm.base import ChatMessage, ChatRequest, ImagePart, ModelInfo, supports_vision
from chatstudio.llm.openai import OpenAIProvider

PNG = ImagePart(b"\x89PNG fake bytes", "image/png")


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "gpt-4.1-nano",
        "anthropic/claude-3-5-sonnet-latest",
        "anthropic/claude-sonnet-4-5",
        "anthropic/claude-opus-4-1",
        "OpenAI/GPT-4O",
    ],
)
def test_known_vision_models(model: str) -> None:
    assert supports_vision(model)


@pytest.mark.parametrize(
    "model", ["openai/gpt-test", "openai/gpt-3.5-turbo", "openai/o3-mini", "cohere/command-r", "local/smollm2-135m"]
)
def test_text_only_models(model: str) -> None:
    assert not supports_vision(model)


def test_a_discovered_model_that_says_it_sees_counts() -> None:
    assert supports_vision("ollama/llava", ModelInfo(id="llava", provider="ollama", vision=True))
    assert not supports_vision("ollama/llava", ModelInfo(id="llava", provider="ollama"))


def _request(*messages: ChatMessage) -> ChatRequest:
    return ChatRequest(model="m", messages=messages, max_tokens=10)


async def test_openai_payload_keeps_plain_strings_and_adds_image_parts() -> None:
    provider = OpenAIProvider(api_key="k")
    try:
        body = provider.payload(_request(ChatMessage("system", "be brief"), ChatMessage("user", "look", (PNG, PNG))))
    finally:
        await provider.aclose()
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    url = "data:image/png;base64," + base64.b64encode(PNG.data).decode()
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "image_url", "image_url": {"url": url}},
    ]


def test_anthropic_payload_puts_image_blocks_before_the_text() -> None:
    body = AnthropicProvider.payload(_request(ChatMessage("user", "plain"), ChatMessage("user", "look", (PNG,))))
    assert body["messages"][0]["content"] == "plain"
    assert body["messages"][1]["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG.data).decode()},
        },
        {"type": "text", "text": "look"},
    ]
