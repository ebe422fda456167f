"""`GET /api/v1/models`: what the configured providers offer, never waiting on one that is down."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from chatstudio.deps import CurrentUser
from chatstudio.llm.registry import ProviderRegistry
from chatstudio.observability.cache import cached_json

router = APIRouter(tags=["models"])

# The list is the same for every user: one copy per TTL, shared by every instance through Redis.
MODELS_CACHE_NAMESPACE = "models"
MODELS_CACHE_TTL = 30.0


@router.get("/models", response_model=dict[str, Any])
async def list_models(request: Request, user: CurrentUser) -> Response:
    registry: ProviderRegistry = request.app.state.registry

    async def produce() -> bytes:
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
        body = {"items": items, "default": registry.canonical(request.app.state.settings.default_model)}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    return await cached_json(request, MODELS_CACHE_NAMESPACE, "list", MODELS_CACHE_TTL, produce)
