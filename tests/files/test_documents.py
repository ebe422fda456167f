"""Documents and images through the upload endpoint: their text is extracted once, and hostile ones
(zip bombs, zip-slip entries, DTDs, pixel bombs) are refused with nothing stored."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_app, sign_up
from tests.files import samples
from tests.files.conftest import Files, assert_nothing_stored, files_settings, upload, upload_dir


async def _text_of(files: Files, file_id: str) -> str:
    _, app = files
    path = next(upload_dir(app).rglob(f"{file_id.replace('-', '')}.txt"))
    return path.read_text(encoding="utf-8")


async def test_pdf_text_is_extracted_and_kept_beside_the_file(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    response = await upload(client, alice, "report.pdf", samples.pdf("Revenue grew 12 percent.", "Costs fell."))
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["kind"], body["media_type"]) == ("pdf", "application/pdf")
    text = await _text_of(files, body["id"])
    assert "Revenue grew 12 percent." in text
    assert "Costs fell." in text
    assert body["text_chars"] == len(text)


async def test_broken_pdf_is_415_unreadable(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    response = await upload(client, alice, "broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unreadable_file"
    await assert_nothing_stored(app)


async def test_docx_paragraphs_are_extracted(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    response = await upload(client, alice, "memo.docx", samples.docx("First paragraph.", "Second one."))
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "docx"
    assert await _text_of(files, response.json()["id"]) == "First paragraph.\nSecond one."


ESCAPING_ENTRIES = ["../evil.sh", "word/../../evil.sh", "/etc/cron.d/evil", "C:/Windows/evil.dll", "..\\evil.bat"]


async def test_docx_with_escaping_entry_names_is_refused(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    for entry in ESCAPING_ENTRIES:
        response = await upload(client, alice, "slip.docx", samples.docx("hi", extra={entry: b"payload"}))
        assert response.status_code == 415, (entry, response.text)
        assert response.json()["error"]["code"] == "unsafe_archive", entry
    await assert_nothing_stored(app)
    assert not any(path.name.startswith("evil") for path in Path(upload_dir(app)).parent.rglob("*"))


async def test_docx_zip_bomb_by_ratio_is_refused(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    bomb = samples.docx("hi", extra={"word/media/zeros.bin": b"\0" * (8 * 1024 * 1024)})
    assert len(bomb) < 64 * 1024  # eight megabytes squeezed under the upload limit
    response = await upload(client, alice, "bomb.docx", bomb)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsafe_archive"
    assert "zip bomb" in response.json()["error"]["message"]
    await assert_nothing_stored(app)


async def test_docx_unpacking_past_the_total_limit_is_refused(
    backend: Any, files_upstream: str, tmp_path: Path
) -> None:
    settings = files_settings(backend.url, files_upstream, tmp_path, max_docx_uncompressed_size=64 * 1024)
    async with running_app(settings, wipe=True) as (client, app):
        alice = await sign_up(client)
        # Incompressible-looking but honest entries: each one is fine, together they unpack too far.
        extra = {f"word/media/{i}.bin": os.urandom(20 * 1024) for i in range(2)}
        extra["word/media/text.xml"] = b"x" * (40 * 1024)
        response = await upload(client, alice, "big.docx", samples.docx("hi", extra=extra))
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == "unsafe_archive"
        await assert_nothing_stored(app)


async def test_docx_with_entity_expansion_is_refused(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    lol = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        f'<w:document xmlns:w="{samples.W_NS}"><w:body><w:p><w:r><w:t>&lol3;</w:t></w:r></w:p></w:body></w:document>'
    )
    response = await upload(client, alice, "lol.docx", samples.docx(document=lol))
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsafe_archive"
    await assert_nothing_stored(app)


async def test_docx_external_entity_leaks_nothing(files: Files, tmp_path: Path) -> None:
    client, app = files
    alice = await sign_up(client)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY xxe SYSTEM "file://{secret}">]>'
        f'<w:document xmlns:w="{samples.W_NS}"><w:body><w:p><w:r><w:t>&xxe;</w:t></w:r></w:p></w:body></w:document>'
    )
    response = await upload(client, alice, "xxe.docx", samples.docx(document=xxe))
    assert response.status_code == 415
    assert "TOP-SECRET-VALUE" not in response.text
    await assert_nothing_stored(app)


async def test_zip_that_is_not_a_word_document_is_a_mismatch(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not word")
    response = await upload(client, alice, "fake.docx", buffer.getvalue())
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "file_type_mismatch"
    await assert_nothing_stored(app)


# legacy .doc: only with a converter


async def test_doc_without_a_converter_says_so(
    backend: Any, files_upstream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    settings = files_settings(backend.url, files_upstream, tmp_path, allowed_extensions=["doc"])
    async with running_app(settings, wipe=True) as (client, app):
        alice = await sign_up(client)
        response = await upload(client, alice, "old.doc", samples.OLE_DOC)
        assert response.status_code == 415
        error = response.json()["error"]
        assert error["code"] == "doc_converter_missing"
        assert "antiword" in error["message"]
        assert "catdoc" in error["message"]
        await assert_nothing_stored(app)


async def test_doc_with_a_converter_on_path_is_converted(
    backend: Any, files_upstream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    catdoc = tools / "catdoc"
    # Stands in for catdoc: checks it was given our flags and a file, prints that file's marker line.
    catdoc.write_text(
        '#!/bin/sh\n[ "$1" = "-d" ] && [ "$2" = "utf-8" ] && [ -f "$4" ] || exit 2\nprintf "Minutes of the meeting"\n'
    )
    catdoc.chmod(catdoc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tools))
    settings = files_settings(backend.url, files_upstream, tmp_path, allowed_extensions=["doc"])
    async with running_app(settings, wipe=True) as (client, _):
        alice = await sign_up(client)
        response = await upload(client, alice, "old.doc", samples.OLE_DOC)
        assert response.status_code == 201, response.text
        assert response.json()["media_type"] == "application/msword"
        assert response.json()["text_chars"] == len("Minutes of the meeting")


async def test_doc_that_is_not_ole_is_a_mismatch(backend: Any, files_upstream: str, tmp_path: Path) -> None:
    settings = files_settings(backend.url, files_upstream, tmp_path, allowed_extensions=["doc"])
    async with running_app(settings, wipe=True) as (client, app):
        alice = await sign_up(client)
        response = await upload(client, alice, "old.doc", samples.docx("modern"))
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "file_type_mismatch"
        await assert_nothing_stored(app)


# images


async def test_png_and_jpeg_are_accepted_with_their_size(files: Files) -> None:
    client, _ = files
    alice = await sign_up(client)
    png = await upload(client, alice, "dot.png", samples.png(5, 7))
    assert png.status_code == 201, png.text
    assert (png.json()["kind"], png.json()["media_type"], png.json()["width"], png.json()["height"]) == (
        "image",
        "image/png",
        5,
        7,
    )
    assert png.json()["text_chars"] is None
    jpg = await upload(client, alice, "dot.JPG", samples.jpeg(6, 2))
    assert jpg.status_code == 201, jpg.text
    assert (jpg.json()["extension"], jpg.json()["media_type"]) == ("jpg", "image/jpeg")


async def test_images_with_absurd_pixel_counts_are_refused_before_decoding(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    for width, height in [(30_000, 30_000), (100_000, 100_000), (1, 2**31 - 1)]:
        bomb = samples.png_bomb(width, height)
        assert len(bomb) < 1024
        response = await upload(client, alice, "bomb.png", bomb)
        assert response.status_code == 422, (width, height, response.text)
        assert response.json()["error"]["code"] == "image_too_large"
    await assert_nothing_stored(app)


async def test_pixel_limit_is_the_setting(backend: Any, files_upstream: str, tmp_path: Path) -> None:
    settings = files_settings(backend.url, files_upstream, tmp_path, max_image_pixels=100)
    async with running_app(settings, wipe=True) as (client, _app):
        alice = await sign_up(client)
        assert (await upload(client, alice, "ok.png", samples.png(10, 10))).status_code == 201
        refused = await upload(client, alice, "big.png", samples.png(11, 10))
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "image_too_large"


async def test_truncated_image_is_unreadable(files: Files) -> None:
    client, app = files
    alice = await sign_up(client)
    response = await upload(client, alice, "cut.png", samples.png(8, 8)[:40])
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unreadable_file"
    await assert_nothing_stored(app)
