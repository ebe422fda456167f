"""Cohere v2 Chat, streamed.

Wire format: https://docs.cohere.com/reference/chat-stream and https://docs.cohere.com/v2/docs/streaming —
`POST {base}/v2/chat` with `stream: true` and a Bearer key. SSE events carry a JSON `type`:
`message-start`, `content-start`, `content-delta` (text in `delta.message.content.text`), `content-end`,
`message-end` (`delta.finish_reason` COMPLETE / STOP_SEQUENCE / MAX_TOKENS / TOOL_CALL / ERROR / TIMEOUT,
`delta.usage.tokens` and `delta.usage.billed_units` with input_tokens / output_tokens, `delta.error`).
The shapes match the installed SDK's `cohere.v2.types.V2ChatStreamResponse`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from typing import Any

import orjson

from chatstudio.llm.base import (
    ChatRequest,
    Finish,
    FinishReason,
    ModelInfo,
    StreamEvent,
    TextDelta,
    Usage,
)
from chatstudio.llm.http import HTTPClient, SSEReader, error_from_kind, premature_end

DEFAULT_BASE_URL = "https://api.cohere.com"

_FINISH: dict[str, FinishReason] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}


class CohereProvider:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "cohere",
        models: Iterable[str] = (),
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.static_models = tuple(models)
        self._http = HTTPClient(
            provider=name,
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "X-Client-Name": "chatstudio"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            secrets=(api_key,),
        )

    @staticmethod
    def payload(request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
        }
        optional: dict[str, Any] = {
            "temperature": request.temperature,
            "p": request.top_p,
            "max_tokens": request.max_tokens,
            "stop_sequences": list(request.stop) if request.stop else None,
            "seed": request.seed,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        return body

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        http = self._http
        end: dict[str, Any] | None = None
        async with http.post("/v2/chat", self.payload(request)) as response:
            reader = SSEReader(response)
            finished = False
            while not finished and (batch := await reader.next_batch()) is not None:
                texts: list[str] = []  # a burst's text goes on as one delta
                failure: Exception | None = None
                for event in batch:
                    if event.data == "[DONE]":
                        finished = True
                        break
                    try:
                        data = orjson.loads(event.data)
                    except ValueError as exc:  # the text before it still goes on
                        failure = exc
                        break
                    kind = data.get("type") or event.event
                    if kind == "content-delta":
                        text = data["delta"]["message"]["content"].get("text")
                        if text:
                            texts.append(text)
                    elif kind == "message-end":
                        end = data.get("delta") or {}
                        finished = True
                        break
                if texts:
                    yield TextDelta("".join(texts))
                if failure is not None:
                    raise failure
            if end is None:
                raise premature_end(self.name)
            reason = str(end.get("finish_reason") or "COMPLETE")
            if reason in ("ERROR", "TIMEOUT") or end.get("error"):
                raise error_from_kind(self.name, reason.lower(), str(end.get("error") or ""), http.secrets)
        counts = end.get("usage") or {}
        tokens = counts.get("tokens") or counts.get("billed_units")
        if tokens:
            yield Usage(int(tokens.get("input_tokens") or 0), int(tokens.get("output_tokens") or 0))
        yield Finish(_FINISH.get(reason, "other"))

    async def list_models(self) -> list[ModelInfo]:
        listing = await self._http.get_json("/v1/models", {"endpoint": "chat", "page_size": "1000"})
        return [
            ModelInfo(
                id=str(item["name"]),
                provider=self.name,
                context_window=int(item["context_length"]) if item.get("context_length") else None,
                owned_by="cohere",
                vision="image-vision" in (item.get("features") or ()),
            )
            for item in listing.get("models") or ()
            if isinstance(item, dict) and item.get("name")
        ]

    async def aclose(self) -> None:
        await self._http.aclose()
