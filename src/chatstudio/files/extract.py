"""Check an upload deeply and pull out its text: PDF (pypdf), DOCX (zipfile + ElementTree), legacy DOC
(antiword or catdoc, when installed), images (Pillow, dimensions read before any decoding).

Blocking and CPU-bound on purpose: the service runs `examine` in a worker thread. Parsers of hostile
files fail in many ways, so each format's parser is fenced and every failure becomes a clean refusal.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

from PIL import Image, UnidentifiedImageError

from chatstudio.files.errors import (
    ConverterMissing,
    FileTypeMismatch,
    ImageTooLarge,
    TextTooLong,
    UnreadableFile,
    UnsafeArchive,
)
from chatstudio.files.models import FileKind
from chatstudio.files.sniff import FileType, check_magic, decode_text

HEAD_BYTES = 8192
# ~1.4M tokens: more than any model's context, so a longer text could never be used.
MAX_TEXT_CHARS = 5_000_000
MAX_PDF_PAGES = 2_000
MAX_ARCHIVE_ENTRIES = 2_000
# Deflate of real documents rarely passes 20:1; a bomb is thousands to one.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_FROM_BYTES = 1024 * 1024
MAX_XML_PROLOG_BYTES = 1024 * 1024
CONVERTER_TIMEOUT_SECONDS = 30
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class Limits:
    max_image_pixels: int
    max_docx_uncompressed: int
    max_text_chars: int = MAX_TEXT_CHARS


@dataclass(frozen=True, slots=True)
class Examined:
    text: str | None
    width: int | None = None
    height: int | None = None


def examine(path: Path, extension: str, file_type: FileType, limits: Limits) -> Examined:
    """Refuse what is not what it claims or is unsafe to open; return its text (or an image's size)."""
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    check_magic(extension, head)
    kind = file_type.kind
    if kind == FileKind.TEXT:
        text = decode_text(path.read_bytes(), extension)
    elif kind == FileKind.PDF:
        text = pdf_text(path, limits.max_text_chars)
    elif kind == FileKind.DOCX:
        text = docx_text(path, limits)
    elif kind == FileKind.DOC:
        text = doc_text(path, limits.max_text_chars)
    else:
        width, height = image_size(path, extension, limits.max_image_pixels)
        return Examined(None, width, height)
    if len(text) > limits.max_text_chars:
        raise TextTooLong()
    return Examined(text)


# PDF


def pdf_text(path: Path, max_chars: int) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFile("The PDF is password-protected.")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise UnreadableFile(f"The PDF has more than {MAX_PDF_PAGES} pages.")
        parts: list[str] = []
        total = 0
        for page in reader.pages:
            text = page.extract_text() or ""
            total += len(text)
            if total > max_chars:
                raise TextTooLong()
            parts.append(text)
    except (UnreadableFile, TextTooLong):
        raise
    except Exception:  # noqa: BLE001 - a hostile PDF can break the parser in any way; all mean "unreadable"
        raise UnreadableFile("The PDF could not be read.") from None
    return "\n\n".join(part.strip() for part in parts).strip()


# DOCX


def _unsafe_entry(name: str) -> bool:
    plain = name.replace("\\", "/")
    return plain.startswith("/") or bool(_WINDOWS_DRIVE.match(plain)) or ".." in plain.split("/")


def check_archive(archive: zipfile.ZipFile, max_uncompressed: int) -> None:
    """Zip-slip and zip-bomb checks on the central directory, before anything is unpacked."""
    entries = archive.infolist()
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        raise UnsafeArchive(f"The document's archive has more than {MAX_ARCHIVE_ENTRIES} entries.")
    total = 0
    for entry in entries:
        if _unsafe_entry(entry.filename):
            raise UnsafeArchive("The document's archive has an entry with an absolute or `..` path.")
        total += entry.file_size
        if total > max_uncompressed:
            raise UnsafeArchive(f"The document would unpack to more than {max_uncompressed} bytes.")
        if entry.file_size > RATIO_CHECK_FROM_BYTES and entry.file_size > entry.compress_size * MAX_COMPRESSION_RATIO:
            raise UnsafeArchive("The document's archive is compressed suspiciously well (a zip bomb).")


def docx_text(path: Path, limits: Limits) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, limits.max_docx_uncompressed)
            names = set(archive.namelist())
            if "[Content_Types].xml" not in names or "word/document.xml" not in names:
                raise FileTypeMismatch("The content is a zip archive, not a .docx document.")
            with archive.open("word/document.xml") as document:
                return _document_text(document, limits.max_text_chars)
    except (UnsafeArchive, FileTypeMismatch, TextTooLong, UnreadableFile):
        raise
    except Exception:  # noqa: BLE001 - corrupt, encrypted or truncated archives fail in many ways
        raise UnreadableFile("The .docx document could not be read.") from None


def _document_text(document: IO[bytes], max_chars: int) -> str:
    """Paragraph text of word/document.xml, streamed. ElementTree resolves no external entities and
    expat stops entity-expansion bombs; a DTD has no business in a .docx, so one is refused outright."""
    parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end"))
    prolog = b""
    in_root = False
    parts: list[str] = []
    total = 0
    while chunk := document.read(64 * 1024):
        if not in_root:
            prolog += chunk
            if b"<!DOCTYPE" in prolog:
                raise UnsafeArchive("The document declares a DTD.")
            if len(prolog) > MAX_XML_PROLOG_BYTES:
                raise UnreadableFile("The .docx document could not be read.")
        try:
            parser.feed(chunk)
            events = list(parser.read_events())
        except ParseError:
            raise UnreadableFile("The .docx document is not well-formed.") from None
        for item in events:
            in_root = True
            if len(item) != 2 or not isinstance(item[1], Element):
                continue
            event, element = item[0], item[1]
            tag = element.tag
            if event == "start":
                if tag == f"{_W}tab":
                    parts.append("\t")
                elif tag in (f"{_W}br", f"{_W}cr"):
                    parts.append("\n")
                continue
            if tag == f"{_W}t" and element.text:
                parts.append(element.text)
                total += len(element.text)
            elif tag == f"{_W}p":
                parts.append("\n")
                element.clear()
            if total > max_chars:
                raise TextTooLong()
    try:
        parser.close()
    except ParseError:
        raise UnreadableFile("The .docx document is not well-formed.") from None
    return "".join(parts).strip()


# DOC (legacy Word, OLE2)

_CONVERTERS = (("antiword", ("-m", "UTF-8.txt", "-w", "0")), ("catdoc", ("-d", "utf-8", "-w")))


def doc_converter() -> tuple[str, tuple[str, ...]] | None:
    for name, args in _CONVERTERS:
        found = shutil.which(name)
        if found:
            return found, args
    return None


def doc_text(path: Path, max_chars: int) -> str:
    converter = doc_converter()
    if converter is None:
        raise ConverterMissing()
    executable, args = converter
    try:
        done = subprocess.run(  # noqa: S603 - a fixed program found on PATH, our own file name, no shell
            [executable, *args, str(path)], capture_output=True, timeout=CONVERTER_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        raise UnreadableFile("The .doc document could not be converted.") from None
    if done.returncode != 0:
        raise UnreadableFile("The .doc document could not be converted.")
    text = done.stdout.decode("utf-8", errors="replace").strip()
    if len(text) > max_chars:
        raise TextTooLong()
    return text


# images

_PILLOW_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}


def image_size(path: Path, extension: str, max_pixels: int) -> tuple[int, int]:
    """Width and height from the header; refused above `max_pixels` before a single pixel is decoded."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    too_large = ImageTooLarge(f"The image has more than {max_pixels} pixels.")
    try:
        with Image.open(path, formats=[_PILLOW_FORMAT[extension]]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise too_large
            image.verify()
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise UnreadableFile("The image could not be read.") from None
    if width < 1 or height < 1:
        raise UnreadableFile("The image is empty.")
    return width, height
