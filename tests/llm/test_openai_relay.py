"""The OpenAI-format relay: bytes out exactly as they came in, cut only at event boundaries, with the
finish reason, the totals and errors read from the few events that carry them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatstudio.llm.base import Finish, LLMError, ProviderBusy, ProviderUnavailable, StreamEvent, Usage, WireChunk
from chatstudio.llm.openai_relay import OpenAIStreamRelay, relay_json


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
        **extra,
    }


USAGE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


def sse(*chunks: dict[str, Any], done: bool = True, newline: str = "\n", compact: bool = True) -> bytes:
    separators = (",", ":") if compact else (", ", ": ")
    events = [f"data: {json.dumps(c, separators=separators)}{newline}{newline}" for c in chunks]
    if done:
        events.append(f"data: [DONE]{newline}{newline}")
    return "".join(events).encode()


def relay_all(body: bytes, pieces: list[int]) -> list[StreamEvent]:
    """Feeds `body` cut at the given offsets, then ends it."""
    relay = OpenAIStreamRelay("upstream", ("sk-upstream-secret",))
    events: list[StreamEvent] = []
    start = 0
    for end in [*pieces, len(body)]:
        events.extend(relay.feed(body[start:end]))
        start = end
    events.extend(relay.end())
    return events


def wire(events: list[StreamEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, WireChunk))


def without_usage(events: list[StreamEvent]) -> bytes:
    parts = []
    for event in events:
        if isinstance(event, WireChunk):
            data = event.data
            if event.usage is not None:
                data = data[: event.usage[0]] + data[event.usage[1] :]
            parts.append(data)
    return b"".join(parts)


BODY = sse(chunk(""), chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE)


@pytest.mark.parametrize("pieces", [[], [1], [10, 11, 12], list(range(1, len(BODY), 7)), [len(BODY) - 3]])
def test_every_byte_is_passed_on_and_the_totals_and_finish_are_read(pieces: list[int]) -> None:
    events = relay_all(BODY, pieces)
    assert wire(events) == BODY
    assert events[-2:] == [Usage(7, 3), Finish("stop")]
    # Slices end at event boundaries only, so an error event could always follow them.
    assert all(e.data.endswith(b"\n\n") for e in events if isinstance(e, WireChunk))
    assert [e.last for e in events if isinstance(e, WireChunk)][-1] is True


@pytest.mark.parametrize("pieces", [[], list(range(1, len(BODY), 5))])
def test_the_totals_event_can_be_cut_out_leaving_a_valid_stream(pieces: list[int]) -> None:
    events = relay_all(BODY, pieces)
    assert without_usage(events) == sse(chunk(""), chunk("Hel"), chunk("lo"), chunk(finish="stop"))


def test_text_that_looks_like_the_markers_is_just_text() -> None:
    tricky = 'data: [DONE]\n\n "finish_reason":"stop" "usage":{"x":1} "error": 1'
    body = sse(chunk(tricky), chunk(finish="length"), done=True)
    events = relay_all(body, [])
    assert wire(events) == body
    assert events[-1] == Finish("length")
    assert not any(isinstance(e, WireChunk) and e.usage for e in events)


def test_spaced_json_and_crlf_lines_are_understood() -> None:
    body = sse(chunk("a"), chunk(finish="stop"), USAGE, newline="\r\n", compact=False)
    events = relay_all(body, [17, 40])
    assert wire(events) == body
    assert events[-2:] == [Usage(7, 3), Finish("stop")]


def test_an_error_event_becomes_our_error_with_secrets_removed() -> None:
    error = {"error": {"message": "slow down, key sk-upstream-secret", "type": "rate_limit_error"}}
    with pytest.raises(ProviderBusy):
        relay_all(sse(chunk("a"), error, done=False), [])
    with pytest.raises(LLMError) as other:
        relay_all(sse(chunk("a"), {"error": {"message": "boom sk-upstream-secret", "type": "server_error"}}), [])
    assert "sk-upstream-secret" not in other.value.message


def test_a_reply_cut_before_its_end_is_an_error_but_a_missing_done_after_the_finish_is_not() -> None:
    with pytest.raises(ProviderUnavailable):
        relay_all(sse(chunk("a"), chunk("b"), done=False), [])
    events = relay_all(sse(chunk("a"), chunk(finish="stop"), done=False), [])
    assert events[-1] == Finish("stop")


def test_without_totals_the_output_is_estimated_from_the_chunks() -> None:
    events = relay_all(sse(chunk("a"), chunk("b"), chunk("c"), chunk(finish="stop")), [])
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.input_tokens == 0
    assert usage.output_tokens >= 3


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_the_estimate_counts_every_content_chunk_whatever_the_slices(newline: str) -> None:
    body = sse(chunk("a"), chunk("b"), chunk("c"), chunk("d"), chunk(finish="stop"), newline=newline)
    for pieces in ([], [len(body) // 3], [40, 41, len(body) // 2, len(body) - 20]):
        events = relay_all(body, pieces)
        assert wire(events) == body
        assert [e for e in events if isinstance(e, Usage)] == [Usage(0, 4)]
        assert events[-1] == Finish("stop")


def test_totals_in_a_later_slice_replace_the_estimate() -> None:
    body = sse(chunk("a"), chunk("b"), chunk(finish="stop"), USAGE)
    events = relay_all(body, [len(sse(chunk("a"), done=False))])
    assert [e for e in events if isinstance(e, Usage)] == [Usage(7, 3)]


def test_an_unterminated_last_event_is_still_taken() -> None:
    body = sse(chunk("a"), chunk(finish="stop"), done=False)[:-2]
    events = relay_all(body, [])
    assert wire(events).startswith(body)
    assert events[-1] == Finish("stop")


def test_a_whole_completion_is_passed_on_with_its_usage() -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-2",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
        }
    ).encode()
    assert relay_json("upstream", body, ()) == [WireChunk(body), Usage(4, 2), Finish("length")]
    with pytest.raises(ProviderBusy):
        relay_json("upstream", b'{"error": {"message": "wait", "type": "rate_limit_error"}}', ())
    with pytest.raises(ValueError):
        relay_json("upstream", b'{"choices": []}', ())
