"""Anthropic Messages API, streamed.

Wire format: https://docs.anthropic.com/en/api/messages and https://docs.anthropic.com/en/api/messages-streaming —
`POST {base}/v1/messages` with `x-api-key` and `anthropic-version: 2023-06-01`, the system prompt in the
top-level `system` field and `max_tokens` required. The SSE stream is `message_start` (input usage),
`content_block_start`, `content_block_delta` (`text_delta`), `content_block_stop`, `message_delta`
(`stop_reason`, output usage), `message_stop`, with `ping` anywhere and `error` events (e.g.
`overloaded_error`) possible mid-stream.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import orjson

from chatstudio.llm.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    FinishReason,
    ModelInfo,
    StreamEvent,
    TextDelta,
    Usage,
)
from chatstudio.llm.http import HTTPClient, SSEReader, error_from_kind, premature_end

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# The API insists on max_tokens; this is what we ask for when the caller did not say.
DEFAULT_MAX_TOKENS = 1024
CONTEXT_WINDOW = 200_000

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _content(message: ChatMessage) -> str | list[dict[str, Any]]:
    """Plain text, or image blocks (base64 source) followed by the text block, the order Anthropic advises."""
    if not message.images:
        return message.content
    blocks: list[dict[str, Any]] = [
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": image.media_type,
                "data": base64.b64encode(image.data).decode("ascii"),
            },
        }
        for image in message.images
    ]
    blocks.append({"type": "text", "text": message.content})
    return blocks


class AnthropicProvider:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "anthropic",
        models: Iterable[str] = (),
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.static_models = tuple(models)
        self._http = HTTPClient(
            provider=name,
            base_url=base_url,
            headers={"x-api-key": api_key, "anthropic-version": API_VERSION},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            secrets=(api_key,),
        )

    @staticmethod
    def payload(request: ChatRequest) -> dict[str, Any]:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": [{"role": m.role, "content": _content(m)} for m in request.messages if m.role != "system"],
            "stream": True,
        }
        if system:
            body["system"] = system
        if request.temperature is not None:
            # Anthropic's range is 0..1 where OpenAI's is 0..2; clamp rather than have the request refused.
            body["temperature"] = min(request.temperature, 1.0)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        return body

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        http = self._http
        input_tokens = 0
        output_tokens = 0
        stop_reason: str | None = None
        async with http.post("/v1/messages", self.payload(request)) as response:
            complete = False
            reader = SSEReader(response)
            while not complete and (batch := await reader.next_batch()) is not None:
                texts: list[str] = []  # a burst's text goes on as one delta
                failure: Exception | None = None
                for event in batch:
                    try:
                        data = orjson.loads(event.data)
                    except ValueError as exc:  # the text before it still goes on
                        failure = exc
                        break
                    kind = data.get("type") or event.event
                    if kind == "content_block_delta":
                        delta = data["delta"]
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            texts.append(delta["text"])
                    elif kind == "message_start":
                        counts = data["message"].get("usage") or {}
                        # Cached prompt tokens are reported apart from input_tokens; all of them were read.
                        input_tokens = sum(
                            int(counts.get(field) or 0)
                            for field in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
                        )
                        output_tokens = int(counts.get("output_tokens") or 0)
                    elif kind == "message_delta":
                        stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                        counts = data.get("usage") or {}
                        output_tokens = int(counts.get("output_tokens") or output_tokens)
                    elif kind == "message_stop":
                        complete = True
                        break
                    elif kind == "error":
                        error = data.get("error") or {}
                        failure = error_from_kind(
                            self.name, str(error.get("type", "")), str(error.get("message", "")), http.secrets
                        )
                        break
                if texts:
                    yield TextDelta("".join(texts))
                if failure is not None:
                    raise failure
            if not complete:
                raise premature_end(self.name)
        yield Usage(input_tokens, output_tokens)
        yield Finish(_FINISH.get(stop_reason, "other") if stop_reason else "stop")

    async def list_models(self) -> list[ModelInfo]:
        listing = await self._http.get_json("/v1/models", {"limit": "100"})
        return [
            ModelInfo(id=str(item["id"]), provider=self.name, context_window=CONTEXT_WINDOW, owned_by="anthropic")
            for item in listing.get("data") or ()
            if isinstance(item, dict) and item.get("id")
        ]

    async def aclose(self) -> None:
        await self._http.aclose()
