"""The `data` scenario's corpus: one user, 10,000 conversations, 1,000,000 messages, loaded with COPY.

The text is synthetic but shaped like chat: words drawn from a 20,000-word vocabulary with a Zipf
distribution (a few very common words, a long tail of rare ones), short user messages and longer
replies. Ids are uuid7 minted from the synthetic times, so every ordering matches what the API
would have produced live, and messages are written in that order too, so the table's physical order
follows time as a live table's does (conversations overlapping in time interleave). Search queries
are drawn from fixed frequency bands of that vocabulary.
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]

VOCABULARY = 20_000
ZIPF_S = 1.07
USER_WORDS = (4, 24)
ASSISTANT_WORDS = (20, 110)
BATCH = 50_000
_SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]


def vocabulary(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCABULARY:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
        if len(word) >= 3 and word not in seen:
            seen.add(word)
            words.append(word)
    return words


def uuid7_at(moment: datetime, rng: random.Random) -> uuid.UUID:
    millis = int(moment.timestamp() * 1000)
    value = (millis << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    return uuid.UUID(int=value)


@dataclass(frozen=True)
class Corpus:
    user_id: uuid.UUID
    conversations: int
    messages: int


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def counts(url: str, user_id: uuid.UUID) -> tuple[int, int]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        conversations = await connection.fetchval("SELECT count(*) FROM conversation WHERE user_id = $1", user_id)
        messages = await connection.fetchval("SELECT count(*) FROM message WHERE user_id = $1", user_id)
        return int(conversations), int(messages)
    finally:
        await connection.close()


def _lengths(rng: random.Random, conversations: int, messages: int) -> list[int]:
    """Messages per conversation: between 2 and ~3x the mean, summing to exactly `messages`."""
    mean = messages // conversations
    lengths = [max(2, round(rng.expovariate(1 / mean))) for _ in range(conversations)]
    scale = messages / sum(lengths)
    lengths = [max(2, round(n * scale)) for n in lengths]
    difference = messages - sum(lengths)
    index = 0
    while difference:
        step = 1 if difference > 0 else -1
        if lengths[index % conversations] + step >= 2:
            lengths[index % conversations] += step
            difference -= step
        index += 1
    return lengths


async def load(url: str, user_id: uuid.UUID, *, conversations: int, messages: int, seed: int = 1) -> Corpus:
    rng = random.Random(seed)
    words = vocabulary()
    weights = list(itertools.accumulate(1 / (rank**ZIPF_S) for rank in range(1, len(words) + 1)))
    lengths = _lengths(rng, conversations, messages)
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    span = (now - start).total_seconds() - 86_400

    def text(low_high: tuple[int, int]) -> str:
        return " ".join(rng.choices(words, cum_weights=weights, k=rng.randint(*low_high)))

    conversation_rows: list[tuple[Any, ...]] = []
    starts: list[tuple[uuid.UUID, datetime, int]] = []
    for length in lengths:
        began = start + timedelta(seconds=rng.random() * span)
        cid = uuid7_at(began, rng)
        last = began + timedelta(seconds=30 * length)
        title = " ".join(rng.choices(words, cum_weights=weights, k=rng.randint(2, 6))).capitalize()
        conversation_rows.append(
            (cid, user_id, title[:300], "openai/gpt-bench", None, "{}", False, False, last, began, last)
        )
        starts.append((cid, began, length))

    def conversation_messages(cid: uuid.UUID, began: datetime, length: int) -> Iterator[tuple[Any, ...]]:
        parent: uuid.UUID | None = None
        for index in range(length):
            at = began + timedelta(seconds=30 * index)
            mid = uuid7_at(at, rng)
            assistant = index % 2 == 1
            content = text(ASSISTANT_WORDS if assistant else USER_WORDS)
            yield (
                mid,
                cid,
                user_id,
                parent,
                "assistant" if assistant else "user",
                content,
                "completed",
                "openai/gpt-bench" if assistant else None,
                at,
                at,
            )
            parent = mid

    def message_rows() -> Iterator[tuple[Any, ...]]:
        # In the order they were written, as a live table receives them: the heap's order follows
        # time (and id), with the conversations that overlap in time interleaved.
        return heapq.merge(*(conversation_messages(*start) for start in starts), key=lambda row: row[0])

    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.copy_records_to_table(
            "conversation",
            records=conversation_rows,
            columns=[
                "id",
                "user_id",
                "title",
                "model",
                "system_prompt",
                "params",
                "pinned",
                "archived",
                "last_activity_at",
                "created_at",
                "updated_at",
            ],
        )
        columns = [
            "id",
            "conversation_id",
            "user_id",
            "parent_id",
            "role",
            "content",
            "status",
            "model",
            "created_at",
            "updated_at",
        ]
        rows = message_rows()
        while batch := list(itertools.islice(rows, BATCH)):
            await connection.copy_records_to_table("message", records=batch, columns=columns)
        await connection.execute("VACUUM ANALYZE conversation")
        await connection.execute("VACUUM ANALYZE message")
    finally:
        await connection.close()
    return Corpus(user_id, conversations, messages)


def search_queries(seed: int = 3) -> list[tuple[str, str]]:
    """(band, query) pairs: single words from common to rare, two-word queries, 3-letter prefixes."""
    rng = random.Random(seed)
    words = vocabulary()
    queries: list[tuple[str, str]] = []
    for band, (low, high) in {
        "common word (rank 1-50)": (0, 50),
        "mid word (rank 50-1000)": (50, 1000),
        "rare word (rank 1000-20000)": (1000, VOCABULARY),
    }.items():
        queries += [(band, rng.choice(words[low:high])) for _ in range(20)]
    queries += [("two words", f"{rng.choice(words[:1000])} {rng.choice(words[:5000])}") for _ in range(20)]
    queries += [("3-letter prefix", rng.choice(words[:5000])[:3]) for _ in range(20)]
    return queries
