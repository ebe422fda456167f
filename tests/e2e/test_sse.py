"""SSE turns against a real uvicorn process: incremental delivery, client disconnect, cancel."""

from __future__ import annotations

import httpx
import pytest

from bench.fake_upstream import expected_text
from tests.e2e.conftest import (
    FAST_MODEL,
    FAST_TOKENS,
    SLOW_MODEL,
    SLOW_TOKENS,
    Account,
    assistant_messages,
    get_message,
    list_messages,
    new_conversation,
    split_reply,
    stream_turn,
    wait_until_settled,
)

pytestmark = pytest.mark.e2e


async def test_deltas_arrive_while_the_reply_is_still_being_generated(
    client: httpx.AsyncClient, account: Account
) -> None:
    conversation_id = await new_conversation(client, account)

    async with stream_turn(client, account, conversation_id, model=SLOW_MODEL) as reader:
        start = await reader.expect("start")
        assert start["conversation_id"] == conversation_id
        assert start["model"] == SLOW_MODEL
        assistant_id = start["assistant_message_id"]
        first = await reader.expect("delta")
        # The first delta is in our hands while the server still has the reply as `streaming`:
        # it was sent as it was generated, not buffered until the end.
        during = await get_message(client, account, conversation_id, assistant_id)
        assert during["status"] == "streaming"
        deltas, final = split_reply(await reader.rest())

    assert final.event == "done", final
    text = first["text"] + "".join(deltas)
    assert text == expected_text(SLOW_TOKENS)
    assert final.data["message"]["id"] == assistant_id
    assert final.data["message"]["content"] == text
    assert final.data["message"]["status"] == "completed"

    # `done` is sent after the reply is stored, so the list already has it: once, complete.
    stored = await assistant_messages(client, account, conversation_id)
    assert len(stored) == 1
    assert stored[0]["id"] == assistant_id
    assert stored[0]["status"] == "completed"
    assert stored[0]["content"] == text
    users = [m for m in await list_messages(client, account, conversation_id) if m["role"] == "user"]
    assert [m["id"] for m in users] == [start["user_message_id"]]


async def test_accept_header_selects_sse(client: httpx.AsyncClient, account: Account) -> None:
    conversation_id = await new_conversation(client, account)

    async with stream_turn(
        client,
        account,
        conversation_id,
        body={"content": "Hello?"},
        headers={"Accept": "text/event-stream"},
    ) as reader:
        start = await reader.expect("start")
        deltas, final = split_reply(await reader.rest())

    assert start["model"] == FAST_MODEL
    assert final.event == "done", final
    assert "".join(deltas) == expected_text(FAST_TOKENS) == final.data["message"]["content"]


async def test_reply_goes_on_and_is_stored_after_the_client_disconnects(
    client: httpx.AsyncClient, account: Account
) -> None:
    conversation_id = await new_conversation(client, account)

    async with stream_turn(client, account, conversation_id, model=SLOW_MODEL) as reader:
        assistant_id = (await reader.expect("start"))["assistant_message_id"]
        await reader.expect("delta")
        await reader.expect("delta")
    # The connection is closed here, long before the 200-token reply could have ended.

    stored = await wait_until_settled(client, account, conversation_id, assistant_id)
    assert stored["status"] == "completed"
    assert stored["content"] == expected_text(SLOW_TOKENS)
    assert len(await assistant_messages(client, account, conversation_id)) == 1


async def test_cancel_over_http_ends_the_stream_and_keeps_exactly_what_was_sent(
    client: httpx.AsyncClient, account: Account
) -> None:
    conversation_id = await new_conversation(client, account)

    async with stream_turn(client, account, conversation_id, model=SLOW_MODEL) as reader:
        assistant_id = (await reader.expect("start"))["assistant_message_id"]
        received = [(await reader.expect("delta"))["text"], (await reader.expect("delta"))["text"]]
        cancel = await client.post(
            f"/api/v1/conversations/{conversation_id}/messages/{assistant_id}/cancel", headers=account.headers
        )
        assert cancel.status_code == 202, cancel.text
        deltas, final = split_reply(await reader.rest())

    received += deltas
    assert final.event == "error", final
    assert final.data["code"] == "cancelled"
    assert final.data["message_id"] == assistant_id
    assert len(received) < SLOW_TOKENS // 2  # stopped, not run to the end
    text = "".join(received)
    assert expected_text(SLOW_TOKENS).startswith(text)

    stored = await assistant_messages(client, account, conversation_id)
    assert len(stored) == 1
    assert stored[0]["id"] == assistant_id
    assert stored[0]["status"] == "cancelled"
    assert stored[0]["content"] == text  # no more, no less than the client saw

    # The turn is over: cancelling again finds nothing running.
    again = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages/{assistant_id}/cancel", headers=account.headers
    )
    assert again.status_code == 404, again.text
