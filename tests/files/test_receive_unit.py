"""The streaming receiver alone: any chunking of the body gives the same file, the limit is exact."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatstudio.files.errors import FileTooLarge, InvalidUpload
from chatstudio.files.storage import FileStore
from chatstudio.files.upload import clean_filename, extension_of, receive_upload

BOUNDARY = "----chunked7"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(data: bytes, *, name: str = "report.txt") -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\nnotes\r\n'
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


async def chunked(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


@pytest.mark.parametrize("size", [1, 7, 64, 4096, 1 << 20])
async def test_any_chunking_gives_the_same_file(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    store = FileStore(tmp_path)
    upload = await receive_upload(
        chunked(body(data), size), content_type=CONTENT_TYPE, store=store, max_bytes=len(data)
    )
    try:
        assert upload.path.read_bytes() == data
        assert (upload.size, upload.sha256, upload.filename) == (
            len(data),
            hashlib.sha256(data).hexdigest(),
            "report.txt",
        )
    finally:
        upload.discard()
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("size", [1, 5, 1000])
async def test_one_byte_over_is_refused_and_the_spool_removed(tmp_path: Path, size: int) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(FileTooLarge):
        await receive_upload(chunked(body(b"x" * 101), size), content_type=CONTENT_TYPE, store=store, max_bytes=100)
    assert list(store.tmp_dir.iterdir()) == []


async def test_a_truncated_body_is_invalid(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(InvalidUpload):
        await receive_upload(chunked(body(b"abc")[:-10], 8), content_type=CONTENT_TYPE, store=store, max_bytes=100)
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("report.pdf", "report.pdf"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("../../x.txt", "x.txt"),
        ("..", "upload"),
        ("", "upload"),
        ("a\u202etxt.exe", "atxt.exe"),
        ("x" * 300 + ".docx", "x" * 250 + ".docx"),
    ],
)
def test_clean_filename(raw: str, clean: str) -> None:
    assert clean_filename(raw) == clean
    assert len(clean_filename(raw)) <= 255


@pytest.mark.parametrize(("name", "ext"), [("a.TXT", "txt"), (".bashrc", ""), ("noext", ""), ("a.tar.gz", "gz")])
def test_extension_of(name: str, ext: str) -> None:
    assert extension_of(name) == ext
