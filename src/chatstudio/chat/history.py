"""What the model is shown: the branch that leads to the new message, trimmed to its context window."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chatstudio.llm.base import ChatMessage, ContextTooLong, Role

# Without each provider's tokenizer at hand (tiktoken fetches its tables from the network), count
# conservatively: about 3.5 bytes of UTF-8 per token for English, and a fixed cost per message for
# the role markers every chat template adds. Over-counting only trims a little early.
_BYTES_PER_TOKEN = 3.5
_TOKENS_PER_MESSAGE = 4
DEFAULT_REPLY_BUDGET = 1024


def estimate_tokens(text: str) -> int:
    return int(len(text.encode()) / _BYTES_PER_TOKEN) + 1


def message_tokens(message: ChatMessage) -> int:
    return estimate_tokens(message.content) + _TOKENS_PER_MESSAGE


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """The few columns of a stored message that history needs."""

    id: uuid.UUID
    parent_id: uuid.UUID | None
    role: str
    content: str
    # Whether files were attached to it: their text goes back into the prompt, and only then are they read.
    has_files: bool = False


def branch(messages: Iterable[StoredTurn], leaf_id: uuid.UUID | None) -> list[StoredTurn]:
    """The path root -> leaf through the reply tree (siblings on other branches are left out)."""
    by_id = {message.id: message for message in messages}
    path: list[StoredTurn] = []
    seen: set[uuid.UUID] = set()
    current = by_id.get(leaf_id) if leaf_id else None
    while current is not None and current.id not in seen:
        seen.add(current.id)
        path.append(current)
        current = by_id.get(current.parent_id) if current.parent_id else None
    path.reverse()
    return path


def reply_budget(context_window: int, max_tokens: int | None) -> int:
    """Tokens kept free for the answer: the caller's max_tokens, else a default capped at a quarter."""
    if max_tokens is not None:
        return max_tokens
    return min(DEFAULT_REPLY_BUDGET, context_window // 4)


def build_prompt(
    *,
    system_prompt: str | None,
    history: Sequence[StoredTurn],
    new_message: str,
    context_window: int,
    max_tokens: int | None,
) -> list[ChatMessage]:
    """System prompt + as much recent history as fits + the new message; oldest turns go first.

    Raises ContextTooLong when even the system prompt and the new message do not fit.
    """
    budget = context_window - reply_budget(context_window, max_tokens)
    head = [ChatMessage("system", system_prompt)] if system_prompt else []
    tail = ChatMessage("user", new_message)
    used = sum(message_tokens(m) for m in head) + message_tokens(tail)
    if used > budget:
        raise ContextTooLong(
            f"The message needs about {used} tokens but the model accepts {max(budget, 0)} "
            f"(context {context_window}, {context_window - budget} kept for the reply)."
        )
    kept: list[ChatMessage] = []
    for turn in reversed(history):
        if not turn.content or turn.role not in ("user", "assistant"):
            continue
        message = ChatMessage(_role(turn.role), turn.content)
        cost = message_tokens(message)
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    # A prompt that starts with an assistant turn confuses some chat templates; drop it.
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    return [*head, *kept, tail]


def _role(value: str) -> Role:
    return "assistant" if value == "assistant" else "user"


def title_from(content: str, limit: int = 60) -> str:
    """A conversation's first user message, cut at a word boundary, names it."""
    words = " ".join(content.split())
    if len(words) <= limit:
        return words or "New conversation"
    cut = words[:limit].rsplit(" ", 1)[0] or words[:limit]
    return cut.rstrip(" ,.;:!?") + "…"
