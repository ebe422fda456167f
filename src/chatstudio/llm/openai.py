"""OpenAI Chat Completions, streamed; also every OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp).

Wire format: https://platform.openai.com/docs/api-reference/chat/create and
https://platform.openai.com/docs/api-reference/chat-streaming — `POST {base}/chat/completions` with
`stream: true`, answered by SSE `data: {chat.completion.chunk}` lines and a final `data: [DONE]`.
`stream_options.include_usage` adds one last chunk with empty `choices` and the `usage` totals.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from typing import Any

import orjson

from chatstudio.llm.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ModelInfo,
    StreamEvent,
    TextDelta,
    Usage,
)
from chatstudio.llm.http import HTTPClient, SSEReader, premature_end
from chatstudio.llm.openai_relay import FINISH_REASONS, OpenAIStreamRelay, relay_json, stream_error

DEFAULT_BASE_URL = "https://api.openai.com/v1"

_CHAT_PREFIXES = ("gpt-", "chatgpt-", "o1", "o3", "o4")
_NOT_CHAT = ("embedding", "tts", "whisper", "dall-e", "audio", "realtime", "transcribe", "image", "moderation")


def _content(message: ChatMessage) -> str | list[dict[str, Any]]:
    """Plain text, or content parts (text, then each image as a base64 data URL) when images ride along."""
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    for image in message.images:
        url = f"data:{image.media_type};base64,{base64.b64encode(image.data).decode('ascii')}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def is_openai_chat_model(model: str) -> bool:
    """api.openai.com lists embedding, speech and image models too; only chat models belong in a picker."""
    return model.startswith(_CHAT_PREFIXES) and not any(word in model for word in _NOT_CHAT)


class OpenAIProvider:
    """One OpenAI-style server. `name` is what users write before the slash (`openai`, `ollama`, ...)."""

    # Speaks OpenAI's wire format, so it honours ChatRequest.relay (see openai_relay).
    relays = True

    def __init__(
        self,
        *,
        name: str = "openai",
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        organization: str | None = None,
        models: Iterable[str] = (),
        max_tokens_field: str = "max_tokens",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        extra_headers: Mapping[str, str] | None = None,
        model_filter: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = name
        self._model_filter = model_filter
        self.static_models = tuple(models)
        # api.openai.com deprecated `max_tokens` for `max_completion_tokens`; compatible servers only know the former.
        self._max_tokens_field = max_tokens_field
        headers = dict(extra_headers or {})
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if organization:
            headers["OpenAI-Organization"] = organization
        self._http = HTTPClient(
            provider=name,
            base_url=base_url,
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            secrets=(api_key,),
        )

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": _content(m)} for m in request.messages],
        }
        if request.relay == "json":
            body["stream"] = False
        else:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        optional: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            self._max_tokens_field: request.max_tokens,
            "stop": list(request.stop) if request.stop else None,
            "seed": request.seed,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        return body

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        if request.relay == "sse":
            return self._relay_stream(request)
        if request.relay == "json":
            return self._relay_json(request)
        return self._events(request)

    async def _relay_stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """The upstream's own events, in slices as they arrive (see openai_relay)."""
        http = self._http
        relay = OpenAIStreamRelay(self.name, http.secrets)
        async with http.post("/chat/completions", self.payload(request)) as response:
            async for data in response.iter_any():
                for event in relay.feed(data):
                    yield event
            for event in relay.end():
                yield event

    async def _relay_json(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        http = self._http
        async with http.post("/chat/completions", self.payload(request), stream=False) as reply:
            events = relay_json(self.name, await reply.read(), http.secrets)
        for event in events:
            yield event

    async def _events(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        http = self._http
        finish: str | None = None
        usage: Usage | None = None
        async with http.post("/chat/completions", self.payload(request)) as response:
            done = False
            reader = SSEReader(response)
            while not done and (batch := await reader.next_batch()) is not None:
                texts: list[str] = []  # a burst's text goes on as one delta
                failure: Exception | None = None
                for event in batch:
                    data = event.data
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except ValueError as exc:  # the text before it still goes on
                        failure = exc
                        break
                    error = chunk.get("error")
                    if error:
                        failure = stream_error(self.name, error, http.secrets)
                        break
                    for choice in chunk.get("choices") or ():
                        if choice.get("index", 0) != 0:
                            continue
                        delta = choice.get("delta")
                        if delta:
                            text = delta.get("content")
                            if text:
                                texts.append(text)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    counts = chunk.get("usage")
                    if counts:
                        usage = Usage(int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0))
                if texts:
                    yield TextDelta("".join(texts))
                if failure is not None:
                    raise failure
            # A few compatible servers close without [DONE]; once the finish reason came, the reply is whole.
            if not done and finish is None:
                raise premature_end(self.name)
        if usage is not None:
            yield usage
        yield Finish(FINISH_REASONS.get(finish, "other") if finish else "stop")

    async def list_models(self) -> list[ModelInfo]:
        listing = await self._http.get_json("/models")
        keep = self._model_filter or (lambda _: True)
        return [
            ModelInfo(id=str(item["id"]), provider=self.name, owned_by=item.get("owned_by"))
            for item in listing.get("data") or ()
            if isinstance(item, dict) and item.get("id") and keep(str(item["id"]))
        ]

    async def aclose(self) -> None:
        await self._http.aclose()
