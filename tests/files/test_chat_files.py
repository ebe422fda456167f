"""Files in chat turns, on every backend, against the fake upstream's wire protocols."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest

from bench.fake_upstream import expected_text
from chatstudio.llm.anthropic import AnthropicProvider
from chatstudio.llm.openai import OpenAIProvider
from tests.chat.test_turns import count_messages, messages, new_conversation, send
from tests.conftest import SignedIn, sign_up
from tests.files import samples
from tests.files.conftest import Files, count_links, upload

NOTES = "Alpha beta gamma.\nDelta epsilon."
ANSWER = expected_text(16)


def words(text: str) -> int:
    return len(text.split())


def prompt_with(name: str, text: str, question: str) -> str:
    """What the model is shown for a question with one attached text file."""
    return f'<file name="{name}">\n{text}\n</file>\n\n{question}'


async def uploaded(client: httpx.AsyncClient, user: SignedIn, name: str, data: bytes) -> str:
    response = await upload(client, user, name, data)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_file_text_goes_before_the_question_and_the_link_is_kept(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    file_id = await uploaded(client, alice, "notes.txt", NOTES.encode())
    conversation = await new_conversation(client, alice)
    response = await send(client, alice, conversation, content="summarise this", file_ids=[file_id])
    assert response.status_code == 200, response.text
    body = response.json()
    # Stored as typed; the file is linked, not pasted into the message.
    assert body["user_message"]["content"] == "summarise this"
    assert body["assistant_message"]["content"] == ANSWER
    # The fake upstream counts the words it was sent: the file's block plus the question.
    assert body["assistant_message"]["input_tokens"] == words(prompt_with("notes.txt", NOTES, "summarise this"))

    attached = await client.get(
        "/api/v1/files", headers=alice.headers, params={"message_id": body["user_message"]["id"]}
    )
    assert attached.status_code == 200
    assert [item["id"] for item in attached.json()["items"]] == [file_id]
    assert await count_links(app) == 1


async def test_follow_up_questions_still_see_the_file(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    file_id = await uploaded(client, alice, "notes.txt", NOTES.encode())
    conversation = await new_conversation(client, alice)
    assert (await send(client, alice, conversation, content="summarise this", file_ids=[file_id])).status_code == 200
    follow_up = await send(client, alice, conversation, content="and the second line?")
    assert follow_up.status_code == 200
    first = words(prompt_with("notes.txt", NOTES, "summarise this"))
    assert follow_up.json()["assistant_message"]["input_tokens"] == first + words(ANSWER) + 4


async def test_turns_look_up_files_only_when_the_history_carries_some(files: Files) -> None:
    """The history query says which messages carried files; a turn reads the files table only then."""
    from sqlalchemy import event

    client, app = files
    alice = await sign_up(client)
    plain = await new_conversation(client, alice)
    with_file = await new_conversation(client, alice)
    file_id = await uploaded(client, alice, "notes.txt", NOTES.encode())
    assert (await send(client, alice, plain, content="hello")).status_code == 200
    assert (await send(client, alice, with_file, content="summarise this", file_ids=[file_id])).status_code == 200
    file_reads: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "uploaded_file" in statement:
            file_reads.append(statement)

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", capture)
    try:
        assert (await send(client, alice, plain, content="and then?")).status_code == 200
        reads_without_files = len(file_reads)
        follow_up = await send(client, alice, with_file, content="and the second line?")
    finally:
        event.remove(app.state.engine.sync_engine, "before_cursor_execute", capture)
    assert reads_without_files == 0
    assert len(file_reads) == 1
    first = words(prompt_with("notes.txt", NOTES, "summarise this"))
    assert follow_up.json()["assistant_message"]["input_tokens"] == first + words(ANSWER) + 4


async def test_two_files_in_the_order_given_and_duplicates_once(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    first = await uploaded(client, alice, "a.txt", b"one two")
    second = await uploaded(client, alice, "b.md", b"three")
    conversation = await new_conversation(client, alice)
    response = await send(client, alice, conversation, content="compare", file_ids=[second, first, second])
    assert response.status_code == 200, response.text
    shown = prompt_with("b.md", "three", "") + "\n\n" + prompt_with("a.txt", "one two", "compare")
    assert response.json()["assistant_message"]["input_tokens"] == words(shown)
    listed = await client.get(
        "/api/v1/files", headers=alice.headers, params={"message_id": response.json()["user_message"]["id"]}
    )
    assert [item["id"] for item in listed.json()["items"]] == [second, first]
    assert await count_links(app) == 2


async def test_pdf_and_docx_text_reach_the_model(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    pdf_id = await uploaded(client, alice, "r.pdf", samples.pdf("Quarterly revenue rose."))
    docx_id = await uploaded(client, alice, "m.docx", samples.docx("Meeting moved to Friday."))
    conversation = await new_conversation(client, alice)
    response = await send(client, alice, conversation, content="what changed", file_ids=[pdf_id, docx_id])
    assert response.status_code == 200, response.text
    shown = (
        prompt_with("r.pdf", "Quarterly revenue rose.", "")
        + "\n\n"
        + prompt_with("m.docx", "Meeting moved to Friday.", "what changed")
    )
    assert response.json()["assistant_message"]["input_tokens"] == words(shown)


async def test_another_users_file_in_a_message_is_404_and_nothing_is_stored(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    bob = await sign_up(client)
    alices = await uploaded(client, alice, "secret.txt", b"alice private words")
    conversation = await new_conversation(client, bob)
    for file_ids in ([alices], [str(uuid.uuid4())]):
        response = await send(client, bob, conversation, content="read it", file_ids=file_ids)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "file_not_found"
        assert "alice private words" not in response.text
    assert await count_messages(app) == 0
    assert await count_links(app) == 0


async def test_attachments_are_shown_to_the_owner_only(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    bob = await sign_up(client)
    file_id = await uploaded(client, alice, "notes.txt", NOTES.encode())
    conversation = await new_conversation(client, alice)
    message_id = (await send(client, alice, conversation, content="hi", file_ids=[file_id])).json()["user_message"][
        "id"
    ]
    response = await client.get("/api/v1/files", headers=bob.headers, params={"message_id": message_id})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "message_not_found"
    assert file_id not in response.text


async def test_deleting_a_file_unlinks_it_but_keeps_the_conversation(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    file_id = await uploaded(client, alice, "notes.txt", NOTES.encode())
    conversation = await new_conversation(client, alice)
    assert (await send(client, alice, conversation, content="hi", file_ids=[file_id])).status_code == 200
    assert (await client.delete(f"/api/v1/files/{file_id}", headers=alice.headers)).status_code == 204
    assert await count_links(app) == 0
    assert [m["content"] for m in await messages(client, alice, conversation)] == ["hi", ANSWER]
    follow_up = await send(client, alice, conversation, content="again")
    assert follow_up.json()["assistant_message"]["input_tokens"] == words("hi") + words(ANSWER) + words("again")


async def test_too_many_file_ids_is_a_validation_error(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    conversation = await new_conversation(client, alice)
    response = await send(client, alice, conversation, content="hi", file_ids=[str(uuid.uuid4()) for _ in range(11)])
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert await count_messages(app) == 0


async def test_a_file_too_long_for_the_context_is_422_and_nothing_is_stored(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    # ~60 KB of words is ~17k tokens; openai/gpt-test has an 8k window.
    file_id = await uploaded(client, alice, "long.txt", b"lorem ipsum " * 5000)
    conversation = await new_conversation(client, alice)
    response = await send(client, alice, conversation, content="summarise", file_ids=[file_id])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "attachments_exceed_context"
    assert await count_messages(app) == 0
    assert await count_links(app) == 0
    # The same file fits a model with a larger window.
    bigger = await send(client, alice, conversation, content="summarise", file_ids=[file_id], model="openai/gpt-4o")
    assert bigger.status_code == 200, bigger.text


# images


async def test_image_to_a_model_without_vision_is_422_and_nothing_is_stored(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    image = await uploaded(client, alice, "chart.png", samples.png())
    conversation = await new_conversation(client, alice)
    response = await send(client, alice, conversation, content="describe", file_ids=[image])
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "model_not_vision_capable"
    assert await count_messages(app) == 0
    assert await count_links(app) == 0


def _spy(monkeypatch: pytest.MonkeyPatch, cls: Any) -> list[dict[str, Any]]:
    """Record the bodies an adapter sends (the fake upstream then answers them on the wire)."""
    sent: list[dict[str, Any]] = []
    real = cls.payload

    def payload(*args: Any) -> dict[str, Any]:
        body: dict[str, Any] = real(*args)
        sent.append(body)
        return body

    if isinstance(cls.__dict__["payload"], staticmethod):
        monkeypatch.setattr(cls, "payload", staticmethod(payload))
    else:
        monkeypatch.setattr(cls, "payload", payload)
    return sent


async def test_image_goes_to_an_openai_vision_model_as_a_data_url(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = files
    alice = await sign_up(client)
    data = samples.png(3, 3)
    image = await uploaded(client, alice, "chart.png", data)
    conversation = await new_conversation(client, alice)
    sent = _spy(monkeypatch, OpenAIProvider)
    response = await send(client, alice, conversation, content="describe", file_ids=[image], model="openai/gpt-4o-mini")
    assert response.status_code == 200, response.text
    assert response.json()["assistant_message"]["status"] == "completed"
    # Only the text part has words; the image rode along as a content part.
    assert response.json()["assistant_message"]["input_tokens"] == 1
    last = sent[-1]["messages"][-1]
    assert last["content"] == [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}},
    ]


async def test_image_goes_to_a_claude_model_as_an_image_block(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = files
    alice = await sign_up(client)
    data = samples.jpeg(2, 2)
    image = await uploaded(client, alice, "photo.jpg", data)
    notes = await uploaded(client, alice, "notes.txt", b"context words")
    conversation = await new_conversation(client, alice)
    sent = _spy(monkeypatch, AnthropicProvider)
    response = await send(
        client, alice, conversation, content="what is it", file_ids=[image, notes], model="anthropic/claude-3-5-haiku"
    )
    assert response.status_code == 200, response.text
    assert response.json()["assistant_message"]["content"] == ANSWER
    last = sent[-1]["messages"][-1]
    assert last["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": base64.b64encode(data).decode()},
        },
        {"type": "text", "text": prompt_with("notes.txt", "context words", "what is it")},
    ]


async def test_regenerating_in_process_resends_the_files(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    """TurnManager.start with `files` answers a question again with its attachments."""
    client, app = files
    alice = await sign_up(client)
    file_id = await uploaded(client, alice, "notes.txt", NOTES.encode())
    conversation = await new_conversation(client, alice)
    first = await send(client, alice, conversation, content="summarise this", file_ids=[file_id])
    question = first.json()["user_message"]["id"]
    from chatstudio.chat.turns import TurnDone
    from chatstudio.files.storage import FileStore

    handle = await app.state.turns.start(
        user_id=uuid.UUID(alice.id),
        conversation_id=uuid.UUID(conversation),
        content=None,
        regenerate_from=uuid.UUID(question),
        files=FileStore.for_settings(app.state.settings),
    )
    done = [event async for event in handle.events() if isinstance(event, TurnDone)]
    assert done[0].assistant_message.input_tokens == words(prompt_with("notes.txt", NOTES, "summarise this"))
