"""Hugging Face: the Inference Providers router and TGI servers both speak OpenAI Chat Completions.

Router: https://huggingface.co/docs/inference-providers/index (`https://router.huggingface.co/v1`);
TGI: https://huggingface.co/docs/text-generation-inference/messages_api (`{server}/v1/chat/completions`).
So this is the OpenAI adapter under another name, not a second implementation.
"""

from __future__ import annotations

from collections.abc import Iterable

from chatstudio.llm.openai import OpenAIProvider

DEFAULT_BASE_URL = "https://router.huggingface.co/v1"


class HuggingFaceProvider(OpenAIProvider):
    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "huggingface",
        models: Iterable[str] = (),
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            name=name,
            base_url=base_url,
            api_key=api_key,
            models=models,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
