"""Uploads over HTTP on every backend: limits, type checks by content, storage, ownership."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from chatstudio.files.models import StoredFile
from tests.conftest import sign_up
from tests.files import samples
from tests.files.conftest import LIMIT, Files, assert_nothing_stored, count_rows, stored_paths, upload, upload_dir

TEXT = "The quarterly numbers are up.\nSee the appendix for details.\n"


async def test_text_upload_is_stored_under_a_server_name_and_served_as_an_attachment(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    response = await upload(client, alice, "notes.txt", TEXT.encode(), "text/html")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["filename"] == "notes.txt"
    assert (body["extension"], body["kind"], body["size_bytes"]) == ("txt", "text", len(TEXT.encode()))
    # The type comes from the content, not from the Content-Type the client claimed.
    assert body["media_type"] == "text/plain; charset=utf-8"
    assert body["sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert body["text_chars"] == len(TEXT)
    file_id = uuid.UUID(body["id"])

    paths = stored_paths(app)
    assert {path.name for path in paths} == {file_id.hex, f"{file_id.hex}.txt"}
    assert all("notes" not in str(path.relative_to(upload_dir(app))) for path in paths)

    meta = await client.get(f"/api/v1/files/{file_id}", headers=alice.headers)
    assert meta.status_code == 200
    assert meta.json() == body

    content = await client.get(f"/api/v1/files/{file_id}/content", headers=alice.headers)
    assert content.status_code == 200
    assert content.content == TEXT.encode()
    assert content.headers["content-disposition"] == 'attachment; filename="notes.txt"'
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["content-type"] == "text/plain; charset=utf-8"
    assert "sandbox" in content.headers["content-security-policy"]


async def test_client_filename_is_metadata_only(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    # Written by hand: httpx would percent-encode the control character the way browsers do.
    body = (
        '--zz\r\nContent-Disposition: form-data; name="file"; filename="../../etc/\u202eevil\x07.txt"\r\n\r\n'
        "plain words\r\n--zz--\r\n"
    ).encode()
    headers = {**alice.headers, "Content-Type": "multipart/form-data; boundary=zz"}
    response = await client.post("/api/v1/files", headers=headers, content=body)
    assert response.status_code == 201, response.text
    # Path, control and bidi-override characters are gone; the bytes live under the id only.
    assert response.json()["filename"] == "evil.txt"
    root = upload_dir(app).resolve()
    assert all(path.resolve().is_relative_to(root) for path in stored_paths(app))
    assert not (root.parent.parent / "etc").exists()

    content = await client.get(f"/api/v1/files/{response.json()['id']}/content", headers=alice.headers)
    assert content.headers["content-disposition"] == 'attachment; filename="evil.txt"'


async def test_non_ascii_filename_is_sent_rfc5987_encoded(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    response = await upload(client, alice, 'Bericht "Q3" über.txt', b"Umsatz")
    assert response.status_code == 201
    assert response.json()["filename"] == 'Bericht "Q3" über.txt'
    content = await client.get(f"/api/v1/files/{response.json()['id']}/content", headers=alice.headers)
    assert content.headers["content-disposition"] == "attachment; filename*=utf-8''Bericht%20%22Q3%22%20%C3%BCber.txt"


# size


async def test_exactly_the_limit_is_accepted(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    response = await upload(client, alice, "full.txt", b"a" * LIMIT)
    assert response.status_code == 201, response.text
    assert response.json()["size_bytes"] == LIMIT


async def test_one_byte_over_the_limit_is_413_and_nothing_is_stored(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    response = await upload(client, alice, "big.txt", b"a" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    await assert_nothing_stored(app)


async def _body(chunks: list[bytes], pulled: list[int]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        pulled.append(len(chunk))
        yield chunk


def _multipart(size: int, boundary: str = "b0undary") -> tuple[list[bytes], dict[str, str]]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    chunk = 16 * 1024
    parts = [head] + [b"x" * chunk] * (size // chunk) + [f"\r\n--{boundary}--\r\n".encode()]
    return parts, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def test_413_arrives_while_streaming_without_reading_the_rest(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    parts, headers = _multipart(LIMIT * 20)  # no Content-Length: chunked, so only counting can stop it
    pulled: list[int] = []
    response = await client.post("/api/v1/files", headers={**alice.headers, **headers}, content=_body(parts, pulled))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    # Reading stopped within one chunk of the limit, far from the 20x body that was offered.
    assert LIMIT < sum(pulled) <= LIMIT + 2 * 16 * 1024
    await assert_nothing_stored(app)


async def test_declared_content_length_over_the_limit_is_refused_before_reading(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    parts, headers = _multipart(1024)
    pulled: list[int] = []
    headers["Content-Length"] = str(LIMIT * 100)
    response = await client.post("/api/v1/files", headers={**alice.headers, **headers}, content=_body(parts, pulled))
    assert response.status_code == 413
    assert pulled == []
    await assert_nothing_stored(app)


async def test_unauthenticated_upload_is_401_and_the_body_is_not_read(files: Files) -> None:
    client, app = files
    parts, headers = _multipart(1024)
    pulled: list[int] = []
    response = await client.post("/api/v1/files", headers=headers, content=_body(parts, pulled))
    assert response.status_code == 401
    assert pulled == []
    await assert_nothing_stored(app)


MALFORMED = [
    ({"Content-Type": "application/json"}, b'{"file": "x"}', 415, "multipart_required"),
    ({"Content-Type": "multipart/form-data"}, b"--x\r\n", 400, "invalid_upload"),
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nContent-Disp", 400, "invalid_upload"),
    (
        {"Content-Type": "multipart/form-data; boundary=zz"},
        b'--zz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--zz--\r\n',
        400,
        "invalid_upload",
    ),
]


async def test_malformed_uploads_are_clear_4xx(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    for headers, body, status, code in MALFORMED:
        response = await client.post("/api/v1/files", headers={**alice.headers, **headers}, content=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, body
    await assert_nothing_stored(app)


async def test_two_files_in_one_upload_are_refused(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    response = await client.post(
        "/api/v1/files",
        headers=alice.headers,
        files=[("file", ("a.txt", b"one", "text/plain")), ("file", ("b.txt", b"two", "text/plain"))],
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_upload"
    await assert_nothing_stored(app)


# types: the content decides


REFUSED = [
    ("tool.exe", b"MZ\x90\x00", "unsupported_file_type"),
    ("noextension", b"hello", "unsupported_file_type"),
    ("page.txt", b"<!DOCTYPE html><html><body>hi</body></html>", "file_type_mismatch"),
    ("notes.md", b"# Title\n\nclick <script>alert(1)</script>", "file_type_mismatch"),
    ("drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "file_type_mismatch"),
    ("drawing.txt", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "file_type_mismatch"),
    ("run.txt", b"#!/bin/sh\nrm -rf /\n", "file_type_mismatch"),
    ("photo.txt", samples.png(), "file_type_mismatch"),
    ("binary.txt", b"\x00\x01\x02garbage\x00", "file_type_mismatch"),
    ("report.docx", samples.pdf("hello"), "file_type_mismatch"),
    ("report.pdf", b"just some text pretending", "file_type_mismatch"),
    ("photo.jpg", samples.png(), "file_type_mismatch"),
    ("photo.png", samples.jpeg(), "file_type_mismatch"),
    ("archive.docx", samples.docx("x")[:0] + b"PK\x03\x04" + b"\x00" * 40, "unreadable_file"),
]


async def test_disagreeing_or_dangerous_content_is_415(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    for name, data, code in REFUSED:
        response = await upload(client, alice, name, data, "text/plain")
        assert response.status_code == 415, (name, response.text)
        assert response.json()["error"]["code"] == code, name
    await assert_nothing_stored(app)


async def test_html_and_svg_are_refused_even_when_the_operator_allows_them(
    backend: Any, files_upstream: str, tmp_path: Any
) -> None:
    from tests.conftest import running_app
    from tests.files.conftest import files_settings

    settings = files_settings(
        backend.url, files_upstream, tmp_path, allowed_extensions=["txt", "html", "svg", "js", "xml"]
    )
    async with running_app(settings, wipe=True) as (client, app):
        alice = await sign_up(client)
        for name, data in [
            ("page.html", b"<html></html>"),
            ("icon.svg", b"<svg/>"),
            ("app.js", b"alert(1)"),
            ("feed.xml", b"<rss/>"),
        ]:
            response = await upload(client, alice, name, data)
            assert response.status_code == 415, name
            assert response.json()["error"]["code"] == "unsupported_file_type"
        await assert_nothing_stored(app)


async def test_extension_not_in_allowed_extensions_is_refused(backend: Any, files_upstream: str, tmp_path: Any) -> None:
    from tests.conftest import running_app
    from tests.files.conftest import files_settings

    async with running_app(
        files_settings(backend.url, files_upstream, tmp_path, allowed_extensions=["pdf"]), wipe=True
    ) as (client, app):
        alice = await sign_up(client)
        response = await upload(client, alice, "notes.txt", b"plain")
        assert response.status_code == 415
        assert "pdf" in response.json()["error"]["message"]
        await assert_nothing_stored(app)


async def test_text_in_windows_encoding_and_utf16_is_read(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    cp1252 = await upload(client, alice, "old.txt", "caf\xe9 \u20ac".encode("cp1252"))
    assert cp1252.status_code == 201
    assert cp1252.json()["text_chars"] == 6
    utf16 = await upload(client, alice, "wide.txt", "h\xe9llo".encode("utf-16"))
    assert utf16.status_code == 201
    assert utf16.json()["text_chars"] == 5


# ownership


async def test_another_users_file_is_404_everywhere_and_survives(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    bob = await sign_up(client)
    file_id = (await upload(client, alice, "secret.txt", b"alice only")).json()["id"]

    for method, path in [
        ("GET", f"/api/v1/files/{file_id}"),
        ("GET", f"/api/v1/files/{file_id}/content"),
        ("DELETE", f"/api/v1/files/{file_id}"),
    ]:
        response = await client.request(method, path, headers=bob.headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "file_not_found"
        assert "alice only" not in response.text
    missing = await client.get(f"/api/v1/files/{uuid.uuid4()}", headers=bob.headers)
    assert missing.json()["error"]["code"] == "file_not_found"

    listed = await client.get("/api/v1/files", headers=bob.headers)
    assert listed.json()["items"] == []
    assert (await client.get(f"/api/v1/files/{file_id}/content", headers=alice.headers)).content == b"alice only"
    assert await count_rows(app) == 1


async def test_delete_removes_record_and_bytes(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    file_id = (await upload(client, alice, "gone.txt", b"bye")).json()["id"]
    assert len(stored_paths(app)) == 2
    response = await client.delete(f"/api/v1/files/{file_id}", headers=alice.headers)
    assert response.status_code == 204
    assert (await client.get(f"/api/v1/files/{file_id}", headers=alice.headers)).status_code == 404
    await assert_nothing_stored(app)
    again = await client.delete(f"/api/v1/files/{file_id}", headers=alice.headers)
    assert again.status_code == 404


async def test_list_is_newest_first_and_paged(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    ids = [(await upload(client, alice, f"n{i}.txt", b"x")).json()["id"] for i in range(3)]
    first = await client.get("/api/v1/files", headers=alice.headers, params={"limit": 2})
    assert [item["id"] for item in first.json()["items"]] == ids[::-1][:2]
    cursor = first.json()["next_cursor"]
    second = await client.get("/api/v1/files", headers=alice.headers, params={"limit": 2, "cursor": cursor})
    assert [item["id"] for item in second.json()["items"]] == ids[:1]
    assert second.json()["next_cursor"] is None


async def test_a_commit_failure_leaves_no_bytes_behind(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    client, app = files
    alice = await sign_up(client)
    from sqlalchemy.ext.asyncio import AsyncSession

    real_commit = AsyncSession.commit

    async def commit_fails_for_files(self: AsyncSession) -> None:
        if any(isinstance(obj, StoredFile) for obj in self.identity_map.values()):
            raise RuntimeError("database went away")
        await real_commit(self)

    monkeypatch.setattr(AsyncSession, "commit", commit_fails_for_files)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
        response = await upload(raw, alice, "lost.txt", b"never kept")
    monkeypatch.setattr(AsyncSession, "commit", real_commit)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    await assert_nothing_stored(app)


async def test_upload_is_listed_in_openapi_as_multipart(files: Files) -> None:
    client, _ = files
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/api/v1/files"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


async def test_response_does_not_echo_upload_paths(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    response = await upload(client, alice, "a.txt", b"words")
    assert str(upload_dir(app)) not in response.text
