"""What a file is, decided by its bytes: the extension only says what it must turn out to be.

Only the types in SUPPORTED are ever accepted, whatever ALLOWED_EXTENSIONS lists: HTML, SVG, XML and
scripts have no entry, and text that turns out to be markup or a script is refused as a mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatstudio.files.errors import FileTypeMismatch, UnsupportedFileType
from chatstudio.files.models import FileKind


@dataclass(frozen=True, slots=True)
class FileType:
    kind: FileKind
    media_type: str


SUPPORTED: dict[str, FileType] = {
    "txt": FileType(FileKind.TEXT, "text/plain; charset=utf-8"),
    "md": FileType(FileKind.TEXT, "text/markdown; charset=utf-8"),
    "csv": FileType(FileKind.TEXT, "text/csv; charset=utf-8"),
    "pdf": FileType(FileKind.PDF, "application/pdf"),
    "docx": FileType(FileKind.DOCX, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    "doc": FileType(FileKind.DOC, "application/msword"),
    "png": FileType(FileKind.IMAGE, "image/png"),
    "jpg": FileType(FileKind.IMAGE, "image/jpeg"),
    "jpeg": FileType(FileKind.IMAGE, "image/jpeg"),
}

# Leading bytes of each binary kind (what `file(1)` and browsers look for).
PDF_MAGIC = b"%PDF-"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
ZIP_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

_MAGIC_BY_EXTENSION = {
    "pdf": PDF_MAGIC,
    "docx": ZIP_MAGIC,
    "doc": OLE_MAGIC,
    "png": PNG_MAGIC,
    "jpg": JPEG_MAGIC,
    "jpeg": JPEG_MAGIC,
}
_ALL_MAGIC = (PDF_MAGIC, PNG_MAGIC, JPEG_MAGIC, ZIP_MAGIC, OLE_MAGIC, b"GIF8", b"\x1f\x8b", b"\x7fELF")

# A document that opens with a tag is markup (the rule browsers sniff HTML by); these elements are
# active content wherever they appear, so they are refused anywhere in a text file.
_STARTS_WITH_TAG = re.compile(r"^\s*<[!?a-zA-Z]")
_ACTIVE_MARKUP = re.compile(
    r"<\s*(?:!doctype|\?xml|html|head|body|script|iframe|frame|frameset|svg|object|embed|applet|meta)\b",
    re.IGNORECASE,
)
# C0 controls other than tab, line feed, form feed and carriage return mark binary data.
_BINARY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def file_type_for(extension: str, allowed: list[str]) -> FileType:
    """The type an upload must be, from its extension; 415 when the operator or this server refuses it."""
    if not extension or extension not in allowed:
        shown = f".{extension}" if extension else "without an extension"
        raise UnsupportedFileType(f"Files {shown} are not accepted; allowed: {', '.join(sorted(allowed))}.")
    found = SUPPORTED.get(extension)
    if found is None:
        raise UnsupportedFileType(f"Files .{extension} are not supported by this server.")
    return found


def check_magic(extension: str, head: bytes) -> None:
    """The leading bytes must be those of the claimed type (and a text file must not be a binary one)."""
    expected = _MAGIC_BY_EXTENSION.get(extension)
    if expected is not None:
        if not head.startswith(expected):
            raise FileTypeMismatch(f"The content is not a .{extension} file.")
    elif head.startswith(_ALL_MAGIC):
        raise FileTypeMismatch(f"The content is a binary file, not .{extension} text.")


def decode_text(data: bytes, extension: str) -> str:
    """Plain text, refused when it is binary, markup (HTML, SVG, XML) or a script."""
    text = _decode(data)
    if text is None or _BINARY_CONTROLS.search(text):
        raise FileTypeMismatch(f"The content is not .{extension} text.")
    if _STARTS_WITH_TAG.match(text) or _ACTIVE_MARKUP.search(text):
        raise FileTypeMismatch("HTML, SVG and XML documents are not accepted, whatever their name.")
    if text.lstrip().startswith("#!"):
        raise FileTypeMismatch("Scripts are not accepted, whatever their name.")
    return text


def _decode(data: bytes) -> str | None:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        # The usual encoding of text files saved on Windows; undefined bytes mean it is not text.
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return None
