"""Relaying an OpenAI-format reply to a client that speaks the same format, without re-encoding it.

The parsing adapter turns every chunk into a TextDelta that the /v1 transport turns back into the
same chunk: two JSON round trips and a handful of generator hops per token, for bytes that arrive
already in the client's format. The relay instead forwards the upstream's events in slices cut at
event boundaries, and parses only the few events that matter to us, found by byte search:
the one carrying the finish reason, the usage totals, or an error.

Why byte search is exact here: inside a JSON string a quote is escaped (`\\"`) and a newline is `\\n`,
so the markers below (an unescaped quote pair around a key, `data: [DONE]` at a line start) can only
match JSON structure, never text the model wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from chatstudio.llm.base import Finish, FinishReason, LLMError, StreamEvent, Usage, WireChunk
from chatstudio.llm.http import error_from_kind, premature_end

# An event larger than this without a boundary is not a chat stream.
MAX_PENDING = 1 << 20
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}
_DONE_LINE = b"data: [DONE]"


def stream_error(provider: str, error: Any, secrets: Sequence[str]) -> LLMError:
    if isinstance(error, dict):
        kind = error.get("code") or error.get("type") or ""
        return error_from_kind(provider, str(kind), str(error.get("message") or ""), secrets)
    return error_from_kind(provider, "", str(error), secrets)


def _has_cr(buffer: bytes) -> bool:
    """Whether CRLF pairs need looking for at all. Most servers end lines with LF alone, and a search
    for an absent CRLF pair scans the whole slice, while a lone byte's absence is found at memchr speed.
    (find, not `in`: on bytes, `in` first tries its operand as an integer, and that failure costs
    more than the search.)"""
    return buffer.find(b"\r") >= 0


def _boundary(buffer: bytes, crlf: bool, end: int | None = None) -> int:
    """The end of the last complete event in `buffer[:end]` (0 when there is none); `crlf`: whether
    `buffer` holds a CR at all (_has_cr)."""
    lf = buffer.rfind(b"\n\n", 0, end)
    pair = buffer.rfind(b"\r\n\r\n", 0, end) if crlf else -1
    return max(lf + 2 if lf >= 0 else 0, pair + 4 if pair >= 0 else 0)


def _data(event: bytes) -> bytes:
    """The data of one SSE event (its `data:` lines joined), b"" when it has none."""
    lines = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines)


class OpenAIStreamRelay:
    """Feed it the upstream body as it arrives; it returns the events to pass on."""

    __slots__ = ("_chunks", "_done", "_finish", "_pending", "_provider", "_secrets", "_usage")

    def __init__(self, provider: str, secrets: Sequence[str]) -> None:
        self._provider = provider
        self._secrets = secrets
        self._pending = b""
        self._done = False
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._chunks = 0  # content chunks seen, the output estimate when a server sends no usage

    def feed(self, data: bytes) -> list[StreamEvent]:
        buffer = self._pending + data if self._pending else data
        crlf = _has_cr(buffer)
        end = _boundary(buffer, crlf)
        if end == 0:
            if len(buffer) > MAX_PENDING:
                raise ValueError("an SSE event without an end")
            self._pending = buffer
            return []
        self._pending = buffer[end:]
        return self._take(buffer[:end] if end < len(buffer) else buffer, crlf)

    def end(self) -> list[StreamEvent]:
        """After the upstream closed: what was left, then Usage and Finish; raises if the reply was cut."""
        events: list[StreamEvent] = []
        if self._pending.strip():
            # Tolerate a last event whose trailing blank line never came.
            last = self._pending + b"\n\n"
            events = self._take(last, _has_cr(last))
        self._pending = b""
        # A few compatible servers close without [DONE]; once the finish reason came, the reply is whole.
        if not self._done and self._finish is None:
            raise premature_end(self._provider)
        if self._usage is not None:
            events.append(self._usage)
        elif self._chunks:
            events.append(Usage(0, self._chunks))
        events.append(Finish(FINISH_REASONS.get(self._finish, "other") if self._finish else "stop"))
        return events

    def _take(self, ready: bytes, crlf: bool) -> list[StreamEvent]:
        """One WireChunk for the slice; only its marked tail is parsed (see the module docstring).
        `crlf`: whether the slice holds a CR at all (_has_cr), found once for all its searches."""
        done = _line_at(ready, ready.rfind(_DONE_LINE))
        self._done = self._done or done
        # Finish reason and totals come in the last events, so the search runs from the end. With one
        # choice, a slice whose last `finish_reason` is null holds no finish.
        marks = [ready.find(b'"error"'), _valued(ready, ready.rfind(b'"finish_reason":'), 16, b'"')]
        marks.append(_valued(ready, ready.rfind(b'"usage":'), 8, b"{"))
        first = min((at for at in marks if at >= 0), default=-1)
        usage_span: tuple[int, int] | None = None
        if first >= 0:
            position = _boundary(ready, crlf, first)
            while position < len(ready):
                end = _event_end(ready, position, crlf)
                payload = _data(ready[position:end])
                if payload and payload != b"[DONE]" and self._read(payload):
                    usage_span = (position, end)
                position = end
        if self._usage is None:
            # Counted only while no totals came: the estimate is needed only if none ever do, and a
            # short reply's one slice carries its totals (the count is a scan of the whole slice).
            self._chunks += ready.count(b'"content":')
        return [WireChunk(ready, usage=usage_span, last=done)]

    def _read(self, payload: bytes) -> bool:
        """Takes the finish reason and totals from one chunk; True for the totals-only chunk."""
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict):
            raise ValueError("a stream chunk that is not an object")
        error = chunk.get("error")
        if error:
            raise stream_error(self._provider, error, self._secrets)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0 and choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        counts = chunk.get("usage")
        if not counts:
            return False
        self._usage = Usage(int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0))
        return not chunk.get("choices")


def _line_at(buffer: bytes, at: int) -> bool:
    return at == 0 or (at > 0 and buffer[at - 1] == 0x0A)


def _valued(buffer: bytes, at: int, length: int, opening: bytes) -> int:
    """`at` when the key found there has a value starting with `opening` (not null), else -1."""
    if at < 0 or not buffer[at + length : at + length + 8].lstrip().startswith(opening):
        return -1
    return at


def _event_end(buffer: bytes, position: int, crlf: bool) -> int:
    """The end of the event starting at `position`, its blank line included."""
    lf = buffer.find(b"\n\n", position)
    pair = buffer.find(b"\r\n\r\n", position) if crlf else -1
    ends = [at + 2 for at in (lf,) if at >= 0] + [at + 4 for at in (pair,) if at >= 0]
    return min(ends) if ends else len(buffer)


def relay_json(provider: str, body: bytes, secrets: Sequence[str]) -> list[StreamEvent]:
    """A whole (non-streamed) chat.completion body: passed on as it is, with its usage and finish."""
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict):
        raise ValueError("a completion that is not an object")
    error = parsed.get("error")
    if error:
        raise stream_error(provider, error, secrets)
    choices = parsed["choices"]
    if not isinstance(choices, list) or not choices:
        raise ValueError("a completion without choices")
    events: list[StreamEvent] = [WireChunk(body)]
    counts = parsed.get("usage")
    if isinstance(counts, dict):
        events.append(Usage(int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0)))
    finish = choices[0].get("finish_reason")
    events.append(Finish(FINISH_REASONS.get(str(finish), "other") if finish else "stop"))
    return events
