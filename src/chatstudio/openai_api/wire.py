"""OpenAI Chat Completions on the wire: the request (refusing anything that names a server), the
response, its stream chunks, and the error shape.

Reference: https://platform.openai.com/docs/api-reference/chat/create and .../chat-streaming.
Streaming is the hot path: each chunk is a prefix and suffix rendered once per request around the
JSON-escaped delta text, so a token costs one string escape, not a dict built and serialised.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chatstudio.llm.base import ChatMessage, ChatRequest, Usage

DONE = b"data: [DONE]\n\n"

# Fields that would point this server at another host or hand it credentials. The server only ever
# connects to the providers its operator configured, so naming one is refused outright.
_FORBIDDEN_NAMES = frozenset(
    {
        "api_type",
        "api_version",
        "azure_deployment",
        "default_headers",
        "default_query",
        "extra_headers",
        "headers",
        "http_client",
        "organization_url",
        "proxies",
    }
)
_FORBIDDEN_SHAPE = re.compile(r"(?:^|_)(?:url|base|endpoint|host|proxy|api_?key|secret|token_url)$", re.IGNORECASE)
# Values that carry user content or JSON schemas, where a key named `url` is just data.
_CONTENT_FIELDS = frozenset(
    {"messages", "tools", "functions", "response_format", "metadata", "logit_bias", "tool_choice", "prediction"}
)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class OpenAIError(Exception):
    """An error already in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_type(status_code: int) -> str:
    if status_code >= 500:
        return "server_error"
    if status_code == 429:
        return "requests"
    return "invalid_request_error"


def _names_a_server(name: str) -> bool:
    return name.lower() in _FORBIDDEN_NAMES or _FORBIDDEN_SHAPE.search(name) is not None


# Every request names the same few keys; a client-chosen long key is not worth keeping.
_names_a_server_cached = functools.lru_cache(maxsize=1024)(_names_a_server)


def forbidden_field(payload: Mapping[str, Any], path: str = "") -> str | None:
    """The first field naming a server, URL or credential, as a dotted path; None when there is none."""
    for name, value in payload.items():
        dotted = f"{path}{name}"
        if _names_a_server_cached(name) if len(name) <= 64 else _names_a_server(name):
            return dotted
        if isinstance(value, Mapping) and not (not path and name in _CONTENT_FIELDS):
            found = forbidden_field(value, f"{dotted}.")
            if found:
                return found
    return None


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[_Part] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """What we honour; other OpenAI parameters are accepted and ignored, as compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    messages: Annotated[list[_Message], Field(min_length=1, max_length=5000)]
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _text(message: _Message, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for number, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise OpenAIError(
                400,
                f"Content of type {part.type!r} is not supported; send text.",
                param=f"messages.{index}.content.{number}",
            )
        parts.append(part.text)
    return "".join(parts)


def to_chat_request(body: CompletionRequest, model_id: str, relay: Literal["sse", "json"] | None = None) -> ChatRequest:
    if body.n not in (None, 1):
        raise OpenAIError(400, "Only n=1 is supported.", param="n")
    if body.tools or body.functions:
        raise OpenAIError(400, "Tool calling is not supported by this server.", param="tools")
    messages = []
    for index, message in enumerate(body.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise OpenAIError(400, f"The role {message.role!r} is not supported.", param=f"messages.{index}.role")
        messages.append(ChatMessage(role, _text(message, index)))  # type: ignore[arg-type]
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return ChatRequest(
        model=model_id,
        messages=messages,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=stop or None,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        relay=relay,
    )


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def completion(completion_id: str, created: int, model: str, text: str, finish: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage_json(usage),
    }


class ChunkWriter:
    """The SSE lines of one streamed completion."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.head = (
            f'data: {{"id":{json.dumps(completion_id)},"object":"chat.completion.chunk","created":{created},'
            f'"model":{json.dumps(model)},'
        )
        self._delta_prefix = (self.head + '"choices":[{"index":0,"delta":{"content":').encode()

    def role(self) -> bytes:
        return self._choice('{"role":"assistant","content":""}', "null")

    def delta(self, text: str) -> bytes:
        return self._delta_prefix + json.dumps(text).encode() + b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def finish(self, reason: str) -> bytes:
        return self._choice("{}", json.dumps(reason))

    def usage(self, usage: Usage) -> bytes:
        return f'{self.head}"choices":[],"usage":{json.dumps(usage_json(usage))}}}\n\n'.encode()

    def _choice(self, delta: str, finish: str) -> bytes:
        choice = f'{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}'
        return f'{self.head}"choices":[{choice}]}}\n\n'.encode()


def error_event(error: OpenAIError) -> bytes:
    """A failure after the first byte: the status is fixed, so it travels as an `error` event (the
    official SDKs raise APIError on it) and the stream ends without [DONE]."""
    return b"data: " + json.dumps(error.body()).encode() + b"\n\n"


def replay_chunks(stored: Mapping[str, Any], include_usage: bool) -> bytes:
    """A stored completion as the stream it would have been: role, the whole text, finish, usage."""
    writer = ChunkWriter(str(stored["id"]), int(stored["created"]), str(stored["model"]))
    choice = stored["choices"][0]
    counts = stored["usage"]
    parts = [writer.role()]
    if choice["message"]["content"]:
        parts.append(writer.delta(choice["message"]["content"]))
    parts.append(writer.finish(choice["finish_reason"]))
    if include_usage:
        parts.append(writer.usage(Usage(counts["prompt_tokens"], counts["completion_tokens"])))
    parts.append(DONE)
    return b"".join(parts)
