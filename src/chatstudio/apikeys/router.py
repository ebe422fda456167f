"""`/api-keys`: create (the secret is shown once), list, revoke. Signed-in users only: a key can never
manage keys (the JWT-only `PrincipalDep`)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, status

from chatstudio.apikeys.auth import ApiKeyAuthenticator
from chatstudio.apikeys.models import ApiKey
from chatstudio.apikeys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyOut
from chatstudio.apikeys.service import ApiKeyService
from chatstudio.deps import AuditDep, PrincipalDep, SessionDep

router = APIRouter(prefix="/api-keys", tags=["api keys"])


def _out(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": key.scope_list,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
    }


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(body: ApiKeyCreate, principal: PrincipalDep, session: SessionDep, audit: AuditDep) -> Any:
    key, raw = await ApiKeyService(session).create(principal.user.id, body)
    await audit(
        "api_key.create",
        actor_id=principal.user.id,
        target_type="api_key",
        target_id=key.id,
        details={"prefix": key.prefix, "scopes": key.scope_list},
    )
    return {**_out(key), "key": raw}


@router.get("", response_model=ApiKeyList)
async def list_api_keys(principal: PrincipalDep, session: SessionDep) -> Any:
    return {
        "items": [ApiKeyOut.model_validate(_out(key)) for key in await ApiKeyService(session).list(principal.user.id)]
    }


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    key_id: uuid.UUID, request: Request, principal: PrincipalDep, session: SessionDep, audit: AuditDep
) -> Response:
    """Effective at once on this instance; other instances drop their cached copy within 30 seconds."""
    key_hash = await ApiKeyService(session).revoke(principal.user.id, key_id)
    # The revoked-set also refuses a look-up that read the row before this transaction commits.
    authenticator: ApiKeyAuthenticator = request.app.state.api_keys
    authenticator.revoke(key_hash)
    await audit("api_key.revoke", actor_id=principal.user.id, target_type="api_key", target_id=key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
