"""Bytes on disk under UPLOAD_DIR. Every name is made here from the file's id; nothing the client sent
ever becomes part of a path."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from chatstudio.config import Settings

_PRIVATE_DIR = 0o700


class FileStore:
    """`<root>/<last two hex digits>/<id hex>` holds the bytes, `... .txt` the extracted text (UTF-8);
    uploads are spooled in `<root>/tmp` (same filesystem, so putting one in place is an atomic rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    @classmethod
    def for_settings(cls, settings: Settings) -> FileStore:
        return cls(Path(settings.upload_dir or settings.data_dir / "uploads"))

    def ensure(self) -> None:
        self.tmp_dir.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)

    def spool(self) -> tuple[int, Path]:
        """A new private temporary file for an incoming upload: (open descriptor, path)."""
        self.ensure()
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.tmp_dir)
        return fd, Path(name)

    def path(self, file_id: uuid.UUID) -> Path:
        key = uuid.UUID(str(file_id)).hex  # refuses anything that is not a uuid
        return self.root / key[-2:] / key

    def text_path(self, file_id: uuid.UUID) -> Path:
        path = self.path(file_id)
        return path.with_name(path.name + ".txt")

    def put(self, spooled: Path, file_id: uuid.UUID, text: str | None) -> None:
        """Move a spooled upload into place, with its text beside it. Blocking: run it in a thread."""
        target = self.path(file_id)
        target.parent.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        if text is not None:
            fd, staging = tempfile.mkstemp(prefix="text-", dir=self.tmp_dir)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.replace(staging, self.text_path(file_id))
            except BaseException:
                Path(staging).unlink(missing_ok=True)
                raise
        os.replace(spooled, target)

    def remove(self, file_id: uuid.UUID) -> None:
        self.path(file_id).unlink(missing_ok=True)
        self.text_path(file_id).unlink(missing_ok=True)

    def read_text(self, file_id: uuid.UUID) -> str:
        try:
            return self.text_path(file_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def read_bytes(self, file_id: uuid.UUID) -> bytes:
        return self.path(file_id).read_bytes()
