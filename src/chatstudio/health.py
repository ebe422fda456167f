"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from chatstudio import __version__

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 3.0


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: touches nothing, so a slow database never gets a healthy process restarted."""
    return {"status": "ok", "version": __version__}


async def _check_database(request: Request) -> None:
    async with request.app.state.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _check_redis(request: Request) -> None:
    await request.app.state.redis.ping()


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    checks: dict[str, Any] = {"database": _check_database}
    if request.app.state.redis is not None:
        checks["redis"] = _check_redis
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(request), CHECK_TIMEOUT_SECONDS)
            results[name] = "ok"
        except TimeoutError:
            results[name] = "timeout"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the kind is enough
            results[name] = f"error: {type(exc).__name__}"
    failing = [name for name, result in results.items() if result != "ok"]
    if failing:
        body = {
            "status": "unavailable",
            "version": __version__,
            "checks": results,
            "error": {
                "code": "not_ready",
                "message": f"failing checks: {', '.join(failing)}",
                "request_id": str(getattr(request.state, "request_id", "")),
            },
        }
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "version": __version__, "checks": results})
