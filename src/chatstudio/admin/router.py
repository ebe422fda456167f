"""Admin routes. Every one needs an admin (403 otherwise) and leaves an audit event."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from chatstudio.admin.schemas import AdminUserOut, AdminUserUpdate, AuditEventOut
from chatstudio.admin.service import AdminService
from chatstudio.audit.service import AuditFilter, AuditLog
from chatstudio.chat.ws import close_user_sockets
from chatstudio.deps import AdminUser, AuditDep, SessionDep
from chatstudio.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from chatstudio.schemas import Page

router = APIRouter(prefix="/admin", tags=["admin"])

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
Cursor = Annotated[str | None, Query(max_length=500)]


@router.get("/users", response_model=Page[AdminUserOut])
async def list_users(
    admin: AdminUser,
    session: SessionDep,
    audit: AuditDep,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> Any:
    items, next_cursor = await AdminService(session).list_users(limit=limit, cursor=cursor, q=q or None)
    await audit("admin.users.list", actor_id=admin.id, details={"q": q} if q else None)
    return {"items": items, "next_cursor": next_cursor}


@router.patch("/users/{user_id}", response_model=AdminUserOut)
async def update_user(
    user_id: uuid.UUID, body: AdminUserUpdate, request: Request, admin: AdminUser, session: SessionDep, audit: AuditDep
) -> Any:
    try:
        user, changes, revoked_keys = await AdminService(session).update_user(admin, user_id, body)
    except Exception as exc:
        await audit(
            "admin.user.update",
            outcome="failure",
            actor_id=admin.id,
            target_type="user",
            target_id=user_id,
            details={"error": getattr(exc, "code", type(exc).__name__)},
        )
        raise
    # Commit before acting on the change elsewhere, so a reconnecting socket already sees it.
    await session.commit()
    if changes.get("is_active") is False:
        for key_hash in revoked_keys:
            request.app.state.api_keys.revoke(key_hash)
        await close_user_sockets(request.app.state, user.id)
    await audit("admin.user.update", actor_id=admin.id, target_type="user", target_id=user.id, details=changes)
    return user


@router.get("/audit", response_model=Page[AuditEventOut])
async def list_audit_events(
    request: Request,
    admin: AdminUser,
    audit: AuditDep,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
    actor_id: uuid.UUID | None = None,
    action: Annotated[str | None, Query(max_length=60)] = None,
    outcome: Annotated[str | None, Query(pattern="^(success|failure)$")] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Any:
    log: AuditLog = request.app.state.audit
    query = AuditFilter(actor_id, action, outcome, target_id, since, until)
    items, next_cursor = await log.page(query, limit=limit, cursor=cursor)
    await audit("admin.audit.list", actor_id=admin.id)
    return {"items": items, "next_cursor": next_cursor}
