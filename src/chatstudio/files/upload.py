"""Receive one file from a multipart/form-data body as it streams in, never holding the body in memory.

Framework-free: it reads an async iterator of body chunks (the router hands it `request.stream()`),
feeds python-multipart's incremental parser and writes the file part straight to a private spool file,
counting as it goes, so an oversized upload is refused the moment it passes the limit.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from chatstudio.files.errors import FileTooLarge, InvalidUpload, MultipartRequired
from chatstudio.files.storage import FileStore

FILE_FIELD = b"file"
# Room for boundaries, part headers and a few small form fields around the file itself: the limit is
# on the file's bytes, so a file of exactly MAX_UPLOAD_SIZE must fit with its envelope.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FILENAME_CHARS = 255


@dataclass
class SpooledUpload:
    """A received file waiting in the spool directory; `discard()` removes it if nobody moved it."""

    path: Path
    filename: str
    size: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def too_large(max_bytes: int) -> FileTooLarge:
    return FileTooLarge(f"The file is larger than the upload limit of {max_bytes} bytes.")


def check_content_length(value: str | None, max_bytes: int) -> None:
    """Refuse before reading a byte when the client already says the body is too big."""
    if value is None:
        return
    if not value.strip().isdigit():
        raise InvalidUpload("The Content-Length header is not a number.")
    if int(value) > max_bytes + MULTIPART_OVERHEAD:
        raise too_large(max_bytes)


def clean_filename(raw: str) -> str:
    """The client's name reduced to a harmless label: last path segment, no control or bidi characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    # Category C covers control characters and the bidi overrides that make "txt.exe" read "exe.txt".
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = ext[:16] if dot and stem else ""
        name = name[: MAX_FILENAME_CHARS - len(keep) - 1].rstrip() + ("." + keep if keep else "")
    return name


def extension_of(filename: str) -> str:
    stem, dot, ext = filename.rpartition(".")
    return ext.lower() if dot and stem else ""


@dataclass
class _Receiver:
    out: BinaryIO
    max_bytes: int
    headers: dict[str, bytes] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    in_file: bool = False
    filename: str | None = None
    size: int = 0
    file_done: bool = False
    ended: bool = False
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def on_part_begin(self) -> None:
        self.headers.clear()
        self.in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get("content-disposition", b"").decode("latin-1"))
        raw_name = options.get(b"filename")
        if options.get(b"name") != FILE_FIELD or not raw_name:
            return  # another form field: read past it (its bytes still count towards the body limit)
        if self.filename is not None:
            raise InvalidUpload("Send one file per upload.")
        # Browsers send the name as raw UTF-8 inside the quotes, with `"` written as %22 (HTML's form encoding).
        self.filename = clean_filename(raw_name.decode("utf-8", errors="replace").replace("%22", '"'))
        self.in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        chunk = data[start:end]
        self.digest.update(chunk)
        self.out.write(chunk)

    def on_part_end(self) -> None:
        if self.in_file:
            self.file_done = True
            self.in_file = False

    def on_end(self) -> None:
        self.ended = True


async def receive_upload(
    chunks: AsyncIterator[bytes], *, content_type: str | None, store: FileStore, max_bytes: int
) -> SpooledUpload:
    """Spool the `file` part of a multipart body; FileTooLarge as soon as it passes `max_bytes`."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise MultipartRequired()
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise InvalidUpload("The multipart boundary is missing.")
    body_limit = max_bytes + MULTIPART_OVERHEAD
    fd, path = store.spool()
    try:
        with os.fdopen(fd, "wb") as out:
            receiver = _Receiver(out, max_bytes)
            parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": receiver.on_part_begin,
                    "on_part_data": receiver.on_part_data,
                    "on_part_end": receiver.on_part_end,
                    "on_header_field": receiver.on_header_field,
                    "on_header_value": receiver.on_header_value,
                    "on_header_end": receiver.on_header_end,
                    "on_headers_finished": receiver.on_headers_finished,
                    "on_end": receiver.on_end,
                },
            )
            received = 0
            async for chunk in chunks:
                received += len(chunk)
                if received > body_limit:
                    raise too_large(max_bytes)
                try:
                    parser.write(chunk)
                except MultipartParseError:
                    raise InvalidUpload() from None
                if receiver.ended:
                    break
            parser.finalize()
        if not receiver.ended:
            raise InvalidUpload("The multipart body ended early.")
        if receiver.filename is None or not receiver.file_done:
            raise InvalidUpload("The body has no file in the field `file`.")
        return SpooledUpload(path, receiver.filename, receiver.size, receiver.digest.hexdigest())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
