from __future__ import annotations

import uuid

import pytest

from chatstudio.chat.history import StoredTurn, branch, build_prompt, estimate_tokens, title_from
from chatstudio.llm.base import ContextTooLong


def chain(*texts: str) -> list[StoredTurn]:
    turns: list[StoredTurn] = []
    parent = None
    for i, text in enumerate(texts):
        turn = StoredTurn(uuid.uuid4(), parent, "user" if i % 2 == 0 else "assistant", text)
        turns.append(turn)
        parent = turn.id
    return turns


def test_branch_follows_parents_and_skips_siblings() -> None:
    a, b, c = chain("q1", "a1", "q2")
    sibling = StoredTurn(uuid.uuid4(), a.id, "assistant", "a1 again")
    assert branch([a, b, c, sibling], c.id) == [a, b, c]
    assert branch([a, b, c, sibling], sibling.id) == [a, sibling]
    assert branch([a, b, c], None) == []


def test_branch_survives_a_cycle() -> None:
    x_id, y_id = uuid.uuid4(), uuid.uuid4()
    x, y = StoredTurn(x_id, y_id, "user", "x"), StoredTurn(y_id, x_id, "assistant", "y")
    assert len(branch([x, y], x_id)) == 2


def test_prompt_keeps_system_and_recent_turns_within_budget() -> None:
    history = chain(*[f"message number {i} " + "word " * 50 for i in range(20)])
    prompt = build_prompt(
        system_prompt="be brief", history=history, new_message="latest", context_window=1000, max_tokens=200
    )
    assert prompt[0].role == "system"
    assert prompt[-1].content == "latest"
    kept = prompt[1:-1]
    assert 0 < len(kept) < 20
    assert kept[-1].content == history[-1].content  # the newest history survives, the oldest goes
    assert kept[0].role == "user"  # never opens on an assistant turn
    used = sum(estimate_tokens(m.content) + 4 for m in prompt)
    assert used <= 1000 - 200


def test_prompt_without_trimming_keeps_everything_in_order() -> None:
    history = chain("q1", "a1", "q2", "a2")
    prompt = build_prompt(system_prompt=None, history=history, new_message="q3", context_window=8192, max_tokens=None)
    assert [(m.role, m.content) for m in prompt] == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
        ("user", "q3"),
    ]


def test_a_message_too_long_for_the_window_is_refused() -> None:
    with pytest.raises(ContextTooLong):
        build_prompt(system_prompt=None, history=[], new_message="word " * 5000, context_window=2048, max_tokens=None)


def test_token_estimate_counts_bytes_not_characters() -> None:
    assert estimate_tokens("日本語のテキスト") > estimate_tokens("abcdefgh")


@pytest.mark.parametrize(
    ("content", "title"),
    [
        ("Hello", "Hello"),
        ("  many   spaces\nand lines ", "many spaces and lines"),
        ("word " * 30, ("word " * 12).strip() + "…"),
        ("", "New conversation"),
    ],
)
def test_title_from_first_message(content: str, title: str) -> None:
    assert title_from(content) == title
