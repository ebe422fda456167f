"""The bytes of each vendor's wire format, rendered once and cached; `fake_upstream` serves them.

Shapes follow the vendors' API references (links in `bench.fake_upstream`) and are checked by driving
the fake with the official `openai`, `anthropic` and `cohere` SDKs (tests/llm/test_fake_upstream_fidelity.py).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any


def expected_text(tokens: int) -> str:
    return " ".join(f"tok{i}" for i in range(tokens))


def _pieces(tokens: int) -> list[str]:
    return [f"tok{i}" if i == 0 else f" tok{i}" for i in range(tokens)]


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def sse_data(value: Any) -> bytes:
    return f"data: {dump(value)}\n\n".encode()


def sse_event(name: str, value: Any) -> bytes:
    return f"event: {name}\ndata: {dump(value)}\n\n".encode()


def count_words(messages: Any, system: Any = None) -> int:
    total = 0
    for content in [system, *(m.get("content") for m in messages if isinstance(m, dict))]:
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += len(text.split())
    return total


@dataclass(frozen=True, slots=True)
class Script:
    """One rendered reply: what comes before the tokens, one event per token, what comes after."""

    head: bytes
    deltas: tuple[bytes, ...]
    tail: bytes
    body: bytes  # head + deltas + tail, written at once when no knob needs pacing
    final: bytes  # the non-streaming JSON answer


def _script(head: list[bytes], deltas: list[bytes], tail: list[bytes], final: Any) -> Script:
    joined_head, joined_tail = b"".join(head), b"".join(tail)
    body = joined_head + b"".join(deltas) + joined_tail
    return Script(joined_head, tuple(deltas), joined_tail, body, dump(final).encode())


@functools.lru_cache(maxsize=1024)
def openai_script(model: str, tokens: int, length: bool, usage: bool, input_tokens: int) -> Script:
    pieces = _pieces(tokens)
    finish = "length" if length else "stop"
    base: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000}
    base.update(model=model, system_fingerprint=None)

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse_data({**base, "choices": [choice], **({"usage": None} if usage else {})})

    counts = {"prompt_tokens": input_tokens, "completion_tokens": tokens, "total_tokens": input_tokens + tokens}
    tail = [chunk({}, finish)]
    if usage:
        tail.append(sse_data({**base, "choices": [], "usage": counts}))
    tail.append(b"data: [DONE]\n\n")
    message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
    final = {
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": counts,
    }
    return _script([chunk({"role": "assistant", "content": ""})], [chunk({"content": p}) for p in pieces], tail, final)


@functools.lru_cache(maxsize=1024)
def anthropic_script(model: str, tokens: int, length: bool, input_tokens: int) -> Script:
    pieces = _pieces(tokens)
    stop = "max_tokens" if length else "end_turn"
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    head = [
        sse_event("message_start", {"type": "message_start", "message": message}),
        sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        sse_event("ping", {"type": "ping"}),
    ]
    deltas = [
        sse_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in pieces
    ]
    tail = [
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": tokens},
            },
        ),
        sse_event("message_stop", {"type": "message_stop"}),
    ]
    final = {
        **message,
        "content": [{"type": "text", "text": "".join(pieces)}],
        "stop_reason": stop,
        "usage": {"input_tokens": input_tokens, "output_tokens": tokens},
    }
    return _script(head, deltas, tail, final)


@functools.lru_cache(maxsize=1024)
def cohere_script(model: str, tokens: int, length: bool, input_tokens: int) -> Script:
    pieces = _pieces(tokens)
    finish = "MAX_TOKENS" if length else "COMPLETE"
    counts = {"input_tokens": input_tokens, "output_tokens": tokens}
    usage = {"billed_units": counts, "tokens": counts}
    empty = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
    head = [
        sse_event("message-start", {"id": "fake-id", "type": "message-start", "delta": {"message": empty}}),
        sse_event(
            "content-start",
            {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
        ),
    ]
    deltas = [
        sse_event(
            "content-delta", {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}}
        )
        for p in pieces
    ]
    tail = [
        sse_event("content-end", {"type": "content-end", "index": 0}),
        sse_event("message-end", {"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}),
    ]
    final = {
        "id": "fake-id",
        "finish_reason": finish,
        "message": {"role": "assistant", "content": [{"type": "text", "text": "".join(pieces)}]},
        "usage": usage,
    }
    return _script(head, deltas, tail, final)


def error_body(protocol: str, status: int, key: str | None, context: bool = False) -> bytes:
    """The error JSON each vendor sends for `status` (shapes from their API references)."""
    kinds: tuple[str, str | None]
    if context:
        words = {
            "openai": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
            "200000 tokens. Please reduce the length of the messages.",
            "anthropic": "prompt is too long: 210000 tokens > 200000 maximum",
            "cohere": "too many tokens: total number of tokens in the prompt cannot exceed 128000 - received 200000.",
        }[protocol]
        kinds = ("invalid_request_error", "context_length_exceeded")
    elif status == 401:
        words = f"Incorrect API key provided: {key}." if key else "No API key provided."
        kinds = ("authentication_error", "invalid_api_key")
    elif status == 403:
        words, kinds = "Your key does not have permission to use this model.", ("permission_error", None)
    elif status == 429:
        words, kinds = (
            "Rate limit reached for requests. Please try again later.",
            ("rate_limit_error", "rate_limit_exceeded"),
        )
    elif status == 529:
        words, kinds = "Overloaded", ("overloaded_error", None)
    elif status >= 500:
        words, kinds = "The server had an error while processing your request.", ("api_error", None)
    else:
        words, kinds = "Invalid request.", ("invalid_request_error", None)
    if protocol == "anthropic":
        return dump({"type": "error", "error": {"type": kinds[0], "message": words}}).encode()
    if protocol == "cohere":
        return dump({"id": "fake-error", "message": words}).encode()
    openai_type = {"authentication_error": "invalid_request_error", "api_error": "server_error"}.get(kinds[0], kinds[0])
    return dump({"error": {"message": words, "type": openai_type, "param": None, "code": kinds[1]}}).encode()


def midstream_error(protocol: str) -> bytes:
    if protocol == "anthropic":
        return sse_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    if protocol == "cohere":
        end = {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal error"}}
        return sse_event("message-end", end)
    error = {"message": "The server had an error while processing your request.", "type": "server_error"}
    return sse_data({"error": {**error, "param": None, "code": None}})


def malformed(protocol: str) -> bytes:
    name = {"anthropic": "content_block_delta", "cohere": "content-delta"}.get(protocol)
    return (f"event: {name}\n" if name else "").encode() + b'data: {"type": "content_block_delta", "delta": {"te\n\n'


_MODEL_NAMES = ("fake-model", "fake-model-large")
LISTINGS = {
    "openai": dump(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in _MODEL_NAMES],
        }
    ).encode(),
    "anthropic": dump(
        {
            "data": [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in _MODEL_NAMES
            ],
            "has_more": False,
            "first_id": _MODEL_NAMES[0],
            "last_id": _MODEL_NAMES[-1],
        }
    ).encode(),
    "cohere": dump(
        {
            "models": [
                {"name": m, "endpoints": ["chat"], "finetuned": False, "context_length": 128000} for m in _MODEL_NAMES
            ]
        }
    ).encode(),
}
