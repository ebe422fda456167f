"""`install_observability(app, settings)`: the one call create_app makes for metrics, error reporting,
compression and the response cache."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstudio import __version__
from chatstudio.errors import error_payload
from chatstudio.observability import metrics
from chatstudio.observability.cache import ResponseCache
from chatstudio.observability.redaction import Redactor
from chatstudio.observability.sentry import init_sentry

# Below this a compressed body saves less than the work costs; SSE is never compressed (Starlette's
# GZipMiddleware excludes text/event-stream, and WebSockets never pass through it).
GZIP_MINIMUM_SIZE = 1024
GZIP_LEVEL = 6


def install_observability(app: Any, settings: Any) -> None:
    """Sentry, compression, /metrics and the lifespan hooks. The access log and metrics middleware is
    part of the edge (chatstudio.edge), outside the framework's own middleware."""
    init_sentry(settings, Redactor.from_settings(settings), __version__)
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_SIZE, compresslevel=GZIP_LEVEL)
    if settings.prometheus_port is None:
        app.add_route("/metrics", _metrics_endpoint(settings), methods=["GET"], include_in_schema=False)
    _wrap_lifespan(app, settings)


def _metrics_endpoint(settings: Any) -> Any:
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None

    async def metrics_endpoint(request: Request) -> Response:
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                request_id = str(getattr(request.state, "request_id", ""))
                return JSONResponse(
                    error_payload("unauthorized", "A valid metrics token is required.", request_id),
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        body = await asyncio.to_thread(metrics.exposition)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    return metrics_endpoint


def _wrap_lifespan(app: Any, settings: Any) -> None:
    """After main's lifespan has built the engine, Redis client and provider registry, attach to them."""
    inner = app.router.lifespan_context
    capacity = settings.db_pool_size + settings.db_max_overflow

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            state_obj = application.state
            state_obj.response_cache = ResponseCache(getattr(state_obj, "redis", None))
            registry = getattr(state_obj, "registry", None)
            if registry is not None:
                registry.observe = metrics.ProviderCall
            engine = getattr(state_obj, "engine", None)
            if engine is not None:
                metrics.instrument_pool(engine, capacity)
            try:
                yield state
            finally:
                if engine is not None:
                    metrics.release_pool(capacity)
                metrics.mark_worker_stopped()

    app.router.lifespan_context = lifespan
