"""`/api/v1/files`: upload (streamed, size-limited), metadata, download as an attachment, delete."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import FileResponse
from starlette.requests import ClientDisconnect

from chatstudio.deps import AuditDep, CurrentUser, SessionDep, SettingsDep
from chatstudio.files.errors import FileNotFound, InvalidUpload
from chatstudio.files.schemas import FileOut
from chatstudio.files.service import FileService, UploadPolicy
from chatstudio.files.storage import FileStore
from chatstudio.files.upload import check_content_length, receive_upload
from chatstudio.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from chatstudio.schemas import Page

router = APIRouter(prefix="/files", tags=["files"])

# Served bytes are never rendered by a browser: a download, typed by us, not sniffed, sandboxed.
_DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, no-store",
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _service(session: SessionDep, settings: SettingsDep) -> tuple[FileService, FileStore]:
    store = FileStore.for_settings(settings)
    return FileService(session, store, UploadPolicy.from_settings(settings)), store


@router.post("", status_code=status.HTTP_201_CREATED, response_model=FileOut, openapi_extra=_UPLOAD_BODY)
async def upload_file(
    request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep, audit: AuditDep
) -> Any:
    """One file in the multipart field `file`. Refused with 413 as soon as it passes MAX_UPLOAD_SIZE, with
    415 when its extension is not allowed or its content is not what the extension says."""
    limit = settings.max_upload_size
    check_content_length(request.headers.get("content-length"), limit)
    # The sign-in check used a pooled connection; give it back before a slow body streams in.
    await session.commit()
    service, store = _service(session, settings)
    try:
        upload = await receive_upload(
            request.stream(), content_type=request.headers.get("content-type"), store=store, max_bytes=limit
        )
    except ClientDisconnect:
        raise InvalidUpload("The upload was interrupted.") from None
    try:
        stored = await service.create(user.id, upload)
    finally:
        upload.discard()
    # Committed here rather than by the dependency, so bytes whose record failed to commit are removed.
    try:
        await session.commit()
    except BaseException:
        await asyncio.to_thread(store.remove, stored.id)
        raise
    await audit(
        "file.upload",
        actor_id=user.id,
        target_type="file",
        target_id=stored.id,
        details={"size_bytes": stored.size_bytes, "kind": stored.kind},
    )
    return stored


@router.get("", response_model=Page[FileOut])
async def list_files(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    message_id: Annotated[uuid.UUID | None, Query(description="only the files attached to this message")] = None,
) -> Any:
    service, _ = _service(session, settings)
    items, next_cursor = await service.list_page(user.id, limit=limit, cursor=cursor, message_id=message_id)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{file_id}", response_model=FileOut)
async def get_file(file_id: uuid.UUID, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Any:
    service, _ = _service(session, settings)
    return await service.get(user.id, file_id)


@router.get("/{file_id}/content", response_class=FileResponse)
async def download_file(
    file_id: uuid.UUID, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    service, store = _service(session, settings)
    stored = await service.get(user.id, file_id)
    path = store.path(stored.id)
    if not path.is_file():
        raise FileNotFound("The file's content is no longer available.")
    return FileResponse(
        path,
        media_type=stored.media_type,
        filename=stored.filename,
        content_disposition_type="attachment",
        headers=_DOWNLOAD_HEADERS,
    )


@router.delete("/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(
    file_id: uuid.UUID, user: CurrentUser, session: SessionDep, settings: SettingsDep, audit: AuditDep
) -> Response:
    service, store = _service(session, settings)
    await service.delete(user.id, file_id)
    # The bytes go only once the record is gone for good.
    await session.commit()
    await asyncio.to_thread(store.remove, file_id)
    await audit("file.delete", actor_id=user.id, target_type="file", target_id=file_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
