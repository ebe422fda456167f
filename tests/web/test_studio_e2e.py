"""The studio page in headless Chromium against a real server process and the fake upstreams.

Every test signs up its own account in a fresh browser context. Waiting is Playwright's
auto-waiting (`expect`, `wait_for_function`), bounded by its timeout; no test asserts a timing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import STRONG_PASSWORD
from tests.helpers_proc import ServerProcess
from tests.web.studio import save_screenshot

if TYPE_CHECKING:
    from playwright.sync_api import FilePayload, Locator, Page, Route, WebSocketRoute

pytestmark = pytest.mark.e2e

SLOW_TOKENS = 200  # slow/gpt-test: the fake upstream's tokens=200,delay_ms=20
FAST_TOKENS = 16  # openai/gpt-test, the default model
LAST_SLOW_TOKEN = f"tok{SLOW_TOKENS - 1}"


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def new_email() -> str:
    return f"studio-{uuid.uuid4().hex[:12]}@example.com"


def sign_up(page: Page, email: str | None = None, name: str = "Ada") -> str:
    email = email or new_email()
    page.goto("/")
    page.get_by_role("tab", name="Create account").click()
    page.locator("#signup-name").fill(name)
    page.locator("#signup-email").fill(email)
    page.locator("#signup-password").fill(STRONG_PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#app-view")).to_be_visible()
    return email


def sign_in(page: Page, email: str, password: str = STRONG_PASSWORD) -> None:
    page.locator("#signin-email").fill(email)
    page.locator("#signin-password").fill(password)
    page.locator("#signin-form").get_by_role("button", name="Sign in").click()


def composer(page: Page) -> Locator:
    return page.get_by_role("textbox", name="Message", exact=True)


def send(page: Page, text: str) -> None:
    box = composer(page)
    box.fill(text)
    box.press("Enter")


def last_reply(page: Page) -> Locator:
    return page.locator("article.msg.assistant").last


def wait_streaming(page: Page, needle: str) -> str:
    """Wait until the newest reply is still streaming (Stop offered) and already shows `needle`; returns its text."""
    page.wait_for_function(
        """(needle) => {
            const reply = [...document.querySelectorAll('article.msg.assistant')].pop();
            return reply && reply.dataset.status === 'streaming'
                && reply.querySelector('.msg-body').textContent.includes(needle)
                && !document.getElementById('stop-button').hidden;
        }""",
        arg=needle,
    )
    return str(last_reply(page).locator(".msg-body").text_content())


@contextmanager
def api_session(server: ServerProcess, email: str, client_ip: str) -> Iterator[httpx.Client]:
    """A separate API sign-in for checking what the server stored (never the page's own tokens)."""
    headers = {"X-Forwarded-For": client_ip}
    with httpx.Client(base_url=server.base_url, timeout=20, trust_env=False, headers=headers) as client:
        tokens = client.post("/api/v1/auth/login", json={"email": email, "password": STRONG_PASSWORD})
        assert tokens.status_code == 200, tokens.text
        client.headers["Authorization"] = f"Bearer {tokens.json()['access_token']}"
        yield client


def test_sign_up_sign_in_sign_out_and_change_password(page: Page) -> None:
    page.goto("/")
    expect(page.get_by_role("tab", name="Sign in")).to_have_attribute("aria-selected", "true")
    page.get_by_role("tab", name="Create account").click()
    email = new_email()
    page.get_by_label("Name (optional)").fill("Grace")
    page.locator("#signup-email").fill(email)
    page.locator("#signup-password").fill("short")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#signup-error")).to_have_text("The password needs at least 10 characters.")

    page.locator("#signup-password").fill(STRONG_PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#user-label")).to_have_text("Grace")
    expect(composer(page)).to_be_focused()

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#auth-view")).to_be_visible()

    page.get_by_role("tab", name="Create account").click()
    page.locator("#signup-email").fill(email)
    page.locator("#signup-password").fill(STRONG_PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#signup-error")).to_have_text("An account with this email already exists. Sign in instead.")

    page.get_by_role("tab", name="Sign in").click()
    sign_in(page, email, "not-the-password-at-all")
    expect(page.locator("#signin-error")).to_have_text("The email or password is not right.")
    sign_in(page, email)
    expect(page.locator("#app-view")).to_be_visible()

    # A reload keeps the sign-in: the refresh token buys a new access token silently.
    page.reload()
    expect(page.locator("#user-label")).to_have_text("Grace")

    new_password = "quartz-Meadow-58-lantern"
    page.get_by_role("button", name="Password").click()
    dialog = page.get_by_role("dialog", name="Change password")
    dialog.get_by_label("Current password").fill(STRONG_PASSWORD)
    dialog.get_by_label("New password").fill(new_password)
    dialog.get_by_role("button", name="Change password").click()
    expect(page.locator("#toast")).to_have_text("Your password was changed.")
    expect(dialog).to_be_hidden()

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, email, STRONG_PASSWORD)
    expect(page.locator("#signin-error")).to_have_text("The email or password is not right.")
    sign_in(page, email, new_password)
    expect(page.locator("#app-view")).to_be_visible()


def test_a_reply_streams_in_and_the_history_survives_a_reload(
    page: Page, studio_server: ServerProcess, client_ip: str
) -> None:
    email = sign_up(page)
    expect(page.get_by_role("heading", name="New chat")).to_be_visible()
    model = page.get_by_label("Model")
    expect(model.locator("option", has_text="openai/gpt-test (default)")).to_have_count(1)
    model.select_option("slow/gpt-test")
    page.get_by_label("System prompt").fill("Answer briefly.")

    box = composer(page)
    box.fill("Tell me a story")
    box.press("Shift+Enter")
    box.press_sequentially("in two lines")
    box.press("Enter")

    partial = wait_streaming(page, "tok5")
    assert LAST_SLOW_TOKEN not in partial
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "completed")
    expect(reply.locator(".msg-body")).to_contain_text(LAST_SLOW_TOKEN)
    assert len(str(reply.locator(".msg-body").text_content())) > len(partial)
    expect(reply.locator(".msg-meta")).to_contain_text("slow/gpt-test · ")
    expect(reply.locator(".msg-meta")).to_contain_text(f"in · {SLOW_TOKENS} out tokens")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    user_message = page.locator("article.msg.user").last.locator(".msg-body")
    expect(user_message).to_have_text("Tell me a story\nin two lines")

    title = page.locator("#chat-title")
    expect(title).not_to_have_text("New chat")
    conversation_title = str(title.text_content())
    expect(page.locator("#recent-list .conv-title", has_text=conversation_title)).to_have_count(1)

    page.reload()
    expect(page.locator("#chat-title")).to_have_text(conversation_title)
    expect(page.locator("article.msg.user .msg-body")).to_have_text(["Tell me a story\nin two lines"])
    expect(last_reply(page).locator(".msg-body")).to_contain_text(LAST_SLOW_TOKEN)
    expect(page.get_by_label("System prompt")).to_have_value("Answer briefly.")
    expect(page.get_by_label("Model")).to_have_value("slow/gpt-test")

    # A new chat, then back to the first one through the list.
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("article.msg")).to_have_count(0)
    page.get_by_role("button", name=re.compile(re.escape(conversation_title))).first.click()
    expect(page.locator("article.msg")).to_have_count(2)

    with api_session(studio_server, email, client_ip) as api:
        items = api.get("/api/v1/conversations").json()["items"]
        assert [(c["title"], c["model"], c["system_prompt"]) for c in items] == [
            (conversation_title, "slow/gpt-test", "Answer briefly.")
        ]


def test_escape_stops_the_reply_and_the_stopped_reply_is_stored(page: Page) -> None:
    sign_up(page)
    page.get_by_label("Model").select_option("slow/gpt-test")
    send(page, "Count slowly")
    partial = wait_streaming(page, "tok3")
    assert LAST_SLOW_TOKEN not in partial
    page.keyboard.press("Escape")

    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "cancelled")
    expect(reply.locator(".msg-meta")).to_contain_text("stopped")
    expect(reply.locator(".msg-meta")).to_contain_text("out tokens")
    stopped_text = str(reply.locator(".msg-body").text_content())
    assert "tok3" in stopped_text
    assert LAST_SLOW_TOKEN not in stopped_text
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(composer(page)).to_be_focused()

    page.reload()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "cancelled")
    expect(reply.locator(".msg-body")).to_have_text(stopped_text)


def test_regenerate_edit_and_copy(page: Page, studio_server: ServerProcess, client_ip: str) -> None:
    email = sign_up(page)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    send(page, "first question")
    expect(last_reply(page)).to_have_attribute("data-status", "completed")
    expect(last_reply(page).locator(".msg-meta")).to_contain_text(f"{FAST_TOKENS} out tokens")

    last_reply(page).get_by_role("button", name="Copy the reply").click()
    expect(page.locator("#toast")).to_have_text("Copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == last_reply(page).locator(".msg-body").text_content()

    page.get_by_role("button", name="Regenerate the reply").click()
    expect(last_reply(page)).to_have_attribute("data-status", "completed")
    expect(page.locator("article.msg")).to_have_count(2)

    page.get_by_role("button", name="Edit your message").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    expect(editor).to_have_value("first question")
    editor.fill("second question")
    editor.press("Enter")
    expect(page.locator("article.msg.user .msg-body")).to_have_text(["second question"])
    expect(last_reply(page)).to_have_attribute("data-status", "completed")

    page.reload()
    expect(page.locator("article.msg.user .msg-body")).to_have_text(["second question"])
    expect(page.locator("article.msg")).to_have_count(2)

    with api_session(studio_server, email, client_ip) as api:
        conversation = api.get("/api/v1/conversations").json()["items"][0]
        messages = api.get(f"/api/v1/conversations/{conversation['id']}/messages").json()["items"]
    # first question, its reply, the regenerated reply, the edited question and its reply
    assert [m["role"] for m in messages].count("assistant") == 3
    assert [m["content"] for m in messages if m["role"] == "user"] == ["first question", "second question"]


def test_a_dropped_socket_reconnects_and_shows_the_stored_reply(page: Page) -> None:
    sockets: list[WebSocketRoute] = []

    def through(route: WebSocketRoute) -> None:
        route.connect_to_server()
        sockets.append(route)

    page.route_web_socket(re.compile(r"/ws/chat$"), through)
    sign_up(page)
    page.get_by_label("Model").select_option("medium/gpt-test")
    send(page, "Keep going while I drop")
    partial = wait_streaming(page, "tok3")
    assert "tok79" not in partial
    sockets[-1].close(code=4000, reason="dropped by the test")

    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "completed")
    expect(reply.locator(".msg-body")).to_contain_text("tok79")
    expect(reply.locator(".msg-meta")).to_contain_text("80 out tokens")
    assert len(sockets) >= 2, "the page opened a new socket"
    expect(page.locator("#connection")).to_be_hidden()
    # And the new socket works.
    send(page, "Still there?")
    expect(page.locator("article.msg.assistant")).to_have_count(2)
    expect(last_reply(page)).to_have_attribute("data-status", "completed")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("busy/gpt-test", "The model provider is busy right now."),
        ("down/gpt-test", "The model provider cannot be reached right now."),
    ],
)
def test_provider_errors_read_as_sentences(page: Page, model: str, message: str) -> None:
    sign_up(page)
    page.get_by_label("Model").select_option(model)
    send(page, "Hello?")
    chat = page.locator("#chat")
    expect(chat).to_contain_text(message)
    text = str(chat.text_content())
    assert '{"' not in text
    assert "error" not in text.lower() or "error_code" not in text


def test_the_conversation_list_searches_pins_renames_deletes_and_scrolls(
    page: Page, studio_server: ServerProcess, client_ip: str
) -> None:
    email = sign_up(page)
    with api_session(studio_server, email, client_ip) as api:
        for number in range(34):
            assert api.post("/api/v1/conversations", json={"title": f"Topic {number:02d}"}).status_code == 201
        needle = api.post("/api/v1/conversations", json={"title": "Needle in the haystack"}).json()
    page.reload()
    items = page.locator("#recent-list > li")
    expect(items).to_have_count(30)
    page.locator("#conversations").evaluate("(box) => { box.scrollTop = box.scrollHeight; }")
    expect(items).to_have_count(35)

    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("needle")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("Needle in the haystack")
    search.fill("")
    expect(items).to_have_count(30)

    page.get_by_role("button", name="Pin: Topic 10").click()
    expect(page.get_by_role("heading", name="Pinned")).to_be_visible()
    expect(page.locator("#pinned-list > li")).to_have_text([re.compile("Topic 10")])
    expect(page.get_by_role("button", name="Unpin: Topic 10")).to_have_attribute("aria-pressed", "true")

    page.get_by_role("button", name="Rename: Topic 10").click()
    dialog = page.get_by_role("dialog", name="Rename conversation")
    dialog.get_by_label("Title").fill("Renamed topic")
    dialog.get_by_role("button", name="Rename").click()
    expect(page.locator("#pinned-list > li")).to_have_text([re.compile("Renamed topic")])

    page.get_by_role("button", name="Delete: Renamed topic").click()
    page.get_by_role("dialog", name="Delete conversation?").get_by_role("button", name="Delete").click()
    expect(page.locator("#pinned-list > li")).to_have_count(0)
    expect(page.get_by_role("heading", name="Pinned")).to_be_hidden()

    with api_session(studio_server, email, client_ip) as api:
        titles = [c["title"] for c in api.get("/api/v1/conversations?limit=100").json()["items"]]
        assert "Renamed topic" not in titles
        assert len(titles) == 34
        assert api.get(f"/api/v1/conversations/{needle['id']}").status_code == 200


def attach(page: Page, name: str, mime: str, content: bytes) -> None:
    payload: FilePayload = {"name": name, "mimeType": mime, "buffer": content}
    page.locator("#file-input").set_input_files(files=[payload])


def drop(page: Page, name: str, mime: str, text: str) -> None:
    """Drag a file over the chat and drop it, as a person would from their file manager."""
    transfer = page.evaluate_handle(
        "([name, mime, text]) => { const t = new DataTransfer();"
        " t.items.add(new File([text], name, {type: mime})); return t; }",
        [name, mime, text],
    )
    page.dispatch_event("#chat", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).to_be_visible()
    page.dispatch_event("#chat", "drop", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).to_be_hidden()


def test_files_are_checked_against_the_limits_uploaded_and_sent_with_the_message(page: Page) -> None:
    sign_up(page)
    expect(page.locator("#upload-limits")).to_have_text(
        "Attach files up to 10 MB: .txt, .md, .pdf, .docx, .png, .jpg, .jpeg."
    )
    chips = page.locator("#attachments > li")

    attach(page, "tool.exe", "application/octet-stream", b"MZ")
    expect(chips.filter(has_text="tool.exe")).to_contain_text(".exe files are not accepted.")
    expect(chips.filter(has_text="tool.exe")).to_have_attribute("data-status", "error")

    page.get_by_role("button", name="Attach a file").focus()
    attach(page, "notes.txt", "text/plain", b"The meeting moved to Thursday.")
    expect(chips.filter(has_text="notes.txt")).to_have_attribute("data-status", "done")
    drop(page, "dropped.md", "text/markdown", "# Agenda\n\n- budget\n")
    expect(chips.filter(has_text="dropped.md")).to_have_attribute("data-status", "done")

    page.get_by_role("button", name="Remove tool.exe").click()
    expect(chips).to_have_count(2)

    send(page, "Summarise these")
    expect(chips).to_have_count(0)
    expect(page.locator("article.msg.user .msg-files")).to_have_text("Attached: notes.txt, dropped.md")
    expect(last_reply(page)).to_have_attribute("data-status", "completed")


def test_a_server_without_uploads_says_so(page: Page) -> None:
    """Before the files API existed (and on a server that turns it off) the upload answers 404."""
    page.route(
        re.compile(r"/api/v1/files$"),
        lambda route: route.fulfill(
            status=404,
            json={"error": {"code": "not_found", "message": "Not Found", "request_id": "x"}},
        ),
    )
    sign_up(page)
    attach(page, "notes.txt", "text/plain", b"some notes")
    chip = page.locator("#attachments > li").filter(has_text="notes.txt")
    expect(chip).to_contain_text("File uploads are not available on this server.")
    expect(chip).to_have_attribute("data-status", "error")
    drop(page, "dropped.md", "text/markdown", "# dropped")
    expect(page.locator("#attachments > li").filter(has_text="dropped.md")).to_contain_text(
        "File uploads are not available on this server."
    )
    expect(page.locator("#attachments > li[data-status='done']")).to_have_count(0)


def test_a_hostile_reply_renders_as_text_and_runs_nothing(page: Page, screenshot_dir: Path) -> None:
    sign_up(page)
    page.get_by_label("Model").select_option("hostile/gpt-test")
    send(page, "Show me some **Markdown**")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "completed")
    body = reply.locator(".msg-body")

    expect(body).to_contain_text('<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>')
    expect(body).to_contain_text("[click me](javascript:window.__xss=3)")
    expect(body.locator("pre code")).to_have_text('<script>window.__xss=4</script>\n<p onclick="window.__xss=5">hi</p>')
    assert body.locator("img, script, iframe, object, embed, [onerror], [onclick], [style]").count() == 0
    assert body.locator("a[href^='javascript']").count() == 0
    link = body.get_by_role("link", name="the docs")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", re.compile(r"\bnoopener\b.*\bnoreferrer\b"))
    expect(body.locator("strong")).to_have_text(["bold"])
    expect(body.locator("em")).to_have_text(["italic"])
    expect(body.locator("p code")).to_have_text(["inline <b>code</b>"])
    expect(body.locator("li")).to_have_text(["first item", "second item"])
    expect(body.get_by_role("button", name="Copy html block")).to_be_visible()
    # the user's own message is text too
    expect(page.locator("article.msg.user .msg-body")).to_have_text("Show me some **Markdown**")
    assert page.evaluate("typeof window.__xss") == "undefined"

    attach(page, "meeting-notes.txt", "text/plain", b"The meeting moved to Thursday.")
    expect(page.locator("#attachments > li")).to_have_attribute("data-status", "done")
    composer(page).fill("What does the report say?")
    save_screenshot(page, screenshot_dir, "studio-desktop.png", publish=True)

    page.reload()
    expect(last_reply(page).locator(".msg-body")).to_contain_text("<script>window.__xss=2</script>")
    assert page.evaluate("typeof window.__xss") == "undefined"

    # Phone-sized: the list folds away behind the menu button.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    menu = page.get_by_role("button", name="Show conversations")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    save_screenshot(page, screenshot_dir, "studio-phone.png")


def test_concurrent_401s_share_one_silent_refresh(page: Page) -> None:
    """Refresh tokens rotate and a reused one ends the session: the page refreshes once, not once per request."""
    sign_up(page)
    refreshes: list[str] = []
    page.on("request", lambda request: refreshes.append(request.url) if request.url.endswith("/refresh") else None)
    refused: list[str] = []

    def expire(route: Route) -> None:
        if len(refused) < 3:
            refused.append(route.request.url)
            route.fulfill(status=401, json={"error": {"code": "unauthorized", "message": "expired", "request_id": ""}})
        else:
            route.continue_()

    page.route(re.compile(r"/api/v1/users/me$"), expire)
    emails = page.evaluate(
        """async () => {
            const { api } = await import('/static/api.js');  // the page's own module: same tokens
            const answers = await Promise.all([1, 2, 3].map(() => api('GET', '/api/v1/users/me')));
            return answers.map((me) => me.email);
        }"""
    )
    assert len(refused) == 3
    assert len(refreshes) == 1
    assert len(set(emails)) == 1
    page.unroute(re.compile(r"/api/v1/users/me$"))
    page.reload()  # the rotated refresh token is the one kept: the session lives on
    expect(page.locator("#user-label")).to_have_text("Ada")
    assert len(refreshes) == 2


MARKDOWN_CASES = [
    (
        "plain *em* and **strong** and ~~gone~~",
        "<p>plain <em>em</em> and <strong>strong</strong> and <del>gone</del></p>",
    ),
    ("snake_case_name stays", "<p>snake_case_name stays</p>"),
    ("a\\*not em\\*", "<p>a*not em*</p>"),
    ("line one\nline two", "<p>line one<br>line two</p>"),
    ("### Title", "<h5>Title</h5>"),
    ("> quoted\n> more", "<blockquote><p>quoted<br>more</p></blockquote>"),
    ("---", "<hr>"),
    ("3. three\n4. four", '<ol start="3"><li><p>three</p></li><li><p>four</p></li></ol>'),
    ("- a\n  - b\n- c", "<ul><li><p>a</p><ul><li><p>b</p></li></ul></li><li><p>c</p></li></ul>"),
    ("`<i>x</i>`", "<p><code>&lt;i&gt;x&lt;/i&gt;</code></p>"),
    ("<b onmouseover=alert(1)>hi</b>", "<p>&lt;b onmouseover=alert(1)&gt;hi&lt;/b&gt;</p>"),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    (
        "[x](data:text/html,<script>alert(1)</script>)",
        "<p>[x](data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;)</p>",
    ),
    ("[x](//evil.example/)", "<p>[x](//evil.example/)</p>"),
    (
        "see https://example.com/a_(b). ok",
        '<p>see <a href="https://example.com/a_(b)" rel="noopener noreferrer nofollow" target="_blank">'
        "https://example.com/a_(b)</a>. ok</p>",
    ),
    (
        "[**docs**](https://example.com/x?a=1&b=2)",
        '<p><a href="https://example.com/x?a=1&amp;b=2" rel="noopener noreferrer nofollow" target="_blank">'
        "<strong>docs</strong></a></p>",
    ),
]


@pytest.mark.parametrize(("source", "html"), MARKDOWN_CASES, ids=[str(i) for i in range(len(MARKDOWN_CASES))])
def test_the_markdown_renderer(page: Page, source: str, html: str) -> None:
    page.goto("/")
    rendered = page.evaluate(
        """async (source) => {
            const { renderMarkdown } = await import('/static/markdown.js');
            const box = document.createElement('div');
            box.append(renderMarkdown(source));
            return box.innerHTML;
        }""",
        source,
    )
    assert rendered == html


def test_an_unterminated_code_fence_streams_as_code(page: Page) -> None:
    page.goto("/")
    rendered = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import('/static/markdown.js');
            const box = document.createElement('div');
            box.append(renderMarkdown('Here:\\n```py\\nprint("<b>")'));
            return [box.querySelector('pre code').textContent, box.querySelector('.code-head span').textContent];
        }"""
    )
    assert rendered == ['print("<b>")', "py"]
