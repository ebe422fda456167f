"""The provider contract every adapter implements, and the errors they map to at one boundary."""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image sent with a message to a vision model: the raw bytes and their type (image/png, image/jpeg)."""

    data: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    images: tuple[ImagePart, ...] = ()


# Model names (without the provider prefix) known to accept images.
VISION_MODEL_PATTERNS = ("gpt-4o*", "gpt-4.1*", "claude-3*", "claude-*-4*")


def supports_vision(model: str, info: ModelInfo | None = None) -> bool:
    """`model` is `provider/name` or a bare name; a discovered ModelInfo that says so also counts."""
    if info is not None and info.vision:
        return True
    name = model.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in VISION_MODEL_PATTERNS)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider is asked. `model` is the provider's own model name (no `provider/` prefix)."""

    model: str
    messages: Sequence[ChatMessage]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: Sequence[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Set only by a transport that itself speaks OpenAI's wire format: an adapter speaking it too may
    # then yield its reply as WireChunk events ("sse": the streamed events, "json": the one response
    # body) instead of TextDelta. Adapters of other formats ignore it.
    relay: Literal["sse", "json"] | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "other"]


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class WireChunk:
    """Bytes of the provider's own OpenAI-format reply, cut at event boundaries, to be forwarded as they
    are: a relay costs no parse and no re-serialisation per token. `usage` is the byte range of the
    event carrying the `stream_options.include_usage` totals, which a client that did not ask for them
    must not receive; `last` says the upstream's end marker is in it. Usage and Finish events still
    follow, as for any stream."""

    data: bytes
    usage: tuple[int, int] | None = None
    last: bool = False


StreamEvent = TextDelta | Usage | Finish | WireChunk


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str  # the provider's model name, without prefix
    provider: str
    context_window: int | None = None
    owned_by: str | None = None
    vision: bool = False


@runtime_checkable
class ChatProvider(Protocol):
    """One per configured provider. `stream` yields TextDelta* then at most one Usage and one Finish."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]: ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def aclose(self) -> None: ...


@dataclass(eq=False)
class LLMError(Exception):
    """Base of provider failures. `status_code` and `code` are what our HTTP error body carries."""

    message: str = "The model provider failed."
    provider: str | None = None
    retry_after: float | None = None
    code: str = field(default="provider_error", init=False)
    status_code: int = field(default=502, init=False)
    retryable: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)


@dataclass(eq=False)
class ProviderAuthError(LLMError):
    """401/403 from the provider: our key is wrong. The user sees 502; the operator must act."""

    message: str = "The model provider rejected the server's credentials."
    code: str = field(default="provider_auth_error", init=False)
    status_code: int = field(default=502, init=False)


@dataclass(eq=False)
class ProviderBusy(LLMError):
    """429 from the provider."""

    message: str = "The model provider is rate limiting requests; try again shortly."
    code: str = field(default="provider_busy", init=False)
    status_code: int = field(default=429, init=False)
    retryable: bool = field(default=True, init=False)


@dataclass(eq=False)
class ProviderUnavailable(LLMError):
    """5xx, connection reset or refused, timeout, malformed stream."""

    message: str = "The model provider is unavailable."
    code: str = field(default="provider_unavailable", init=False)
    status_code: int = field(default=503, init=False)
    retryable: bool = field(default=True, init=False)


@dataclass(eq=False)
class ContextTooLong(LLMError):
    message: str = "The conversation is too long for the model's context window."
    code: str = field(default="context_length_exceeded", init=False)
    status_code: int = field(default=422, init=False)


@dataclass(eq=False)
class ProviderBadRequest(LLMError):
    """Any other 4xx the provider gives for our request (bad parameter, unknown model upstream)."""

    message: str = "The model provider rejected the request."
    code: str = field(default="provider_bad_request", init=False)
    status_code: int = field(default=422, init=False)


@dataclass(eq=False)
class UnknownModel(LLMError):
    message: str = "The model is not known."
    code: str = field(default="unknown_model", init=False)
    status_code: int = field(default=422, init=False)


@dataclass(eq=False)
class ProviderNotConfigured(LLMError):
    message: str = "The model's provider is not configured on this server."
    code: str = field(default="provider_not_configured", init=False)
    status_code: int = field(default=422, init=False)


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[str, Usage | None, Finish | None]:
    """Non-streaming is the stream, gathered: one code path, identical results."""
    parts: list[str] = []
    usage: Usage | None = None
    finish: Finish | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Usage):
            usage = event
        elif isinstance(event, Finish):
            finish = event
    return "".join(parts), usage, finish
