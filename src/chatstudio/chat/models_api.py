"""`GET /api/v1/models`: what the configured providers offer, never waiting on one that is down."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from chatstudio.deps import CurrentUser
from chatstudio.llm.registry import ProviderRegistry

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(request: Request, user: CurrentUser) -> dict[str, Any]:
    registry: ProviderRegistry = request.app.state.registry
    listing = await registry.list_models()
    items = [
        {
            "id": model_id,
            "provider": info.provider,
            "name": info.id,
            "context_window": info.context_window or registry.context_window(model_id),
            "vision": info.vision,
        }
        for model_id, info in listing
    ]
    return {"items": items, "default": registry.canonical(request.app.state.settings.default_model)}
