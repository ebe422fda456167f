"""The ASGI side of observability: one middleware just inside RequestId that times, counts and logs
every request (HTTP and WebSocket) with its route template, never its raw path, as the metric label."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstudio.apikeys.service import is_api_key
from chatstudio.errors import AppError
from chatstudio.http_security import cached_key_owner
from chatstudio.observability import metrics
from chatstudio.observability.logging import ACCESS_LOGGER, request_id_var, route_var, user_id_var
from chatstudio.observability.redaction import SENSITIVE_NAMES
from chatstudio.security import decode_access_token

access_log = logging.getLogger(ACCESS_LOGGER)

UNMATCHED = "<unmatched>"
RATE_LIMIT_CODES = frozenset({"rate_limited", "too_many_attempts"})
WS_RATE_LIMITED = 4429
# Probes and scrapes every few seconds would drown the access log; they go at DEBUG.
QUIET_PATHS = frozenset({"/health", "/health/ready", "/metrics"})


@dataclass(frozen=True, slots=True)
class RouteLabel:
    """For `scope["route"]`, set by endpoints served in front of the router (main._edge), which has no
    route object to put there: what the metrics and the access log read of a route."""

    path_format: str


def _route(scope: Scope) -> str:
    """The matched route's template with the prefixes it was included under (`/api/v1/...`).

    A route included from a router knows only its own part of the path, so the prefix is whatever
    precedes the part its pattern matches in the actual path.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not template:
        return UNMATCHED
    regex = getattr(route, "path_regex", None)
    path = str(scope.get("path", ""))
    if regex is not None and not regex.match(path):
        for index in range(1, len(path)):
            if path[index] == "/" and regex.match(path[index:]):
                return path[:index] + str(template)
    return str(template)


def _safe_query(raw: bytes) -> str:
    """The query string with the values of sensitive parameters masked."""
    if not raw:
        return ""
    parts = []
    for item in raw.decode("latin-1").split("&"):
        name, eq, _ = item.partition("=")
        parts.append(f"{name}=[REDACTED]" if eq and name.lower() in SENSITIVE_NAMES else item)
    return "&".join(parts)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, key: str, algorithm: str) -> None:
        self.app = app
        self.key = key
        self.algorithm = algorithm

    def _user_id(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token:
                    if is_api_key(token):
                        # An API key is no JWT: its owner, when this instance knows it, costs a dict look-up.
                        owner = cached_key_owner(scope, token.strip())
                        return str(owner) if owner is not None else None
                    try:
                        return str(decode_access_token(token.strip(), key=self.key, algorithm=self.algorithm).user_id)
                    except AppError:
                        return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _bind_context(self, scope: Scope) -> tuple[Any, Any, Any]:
        return (
            request_id_var.set(str(scope.get("state", {}).get("request_id", "")) or None),
            user_id_var.set(self._user_id(scope)),
            route_var.set(None),
        )

    @staticmethod
    def _unbind(tokens: tuple[Any, Any, Any]) -> None:
        request_id_var.reset(tokens[0])
        user_id_var.reset(tokens[1])
        route_var.reset(tokens[2])

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        tokens = self._bind_context(scope)
        status = 500
        error_body = bytearray()
        size = 0

        async def observed_send(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route_var.set(_route(scope))
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                size += len(body)
                if status == 429 and len(error_body) < 4096:
                    error_body.extend(body[:4096])
            await send(message)

        metrics.HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            route = _route(scope)
            method = str(scope.get("method", "GET"))
            metrics.child(metrics.HTTP_REQUESTS, method, route, str(status)).inc()
            metrics.child(metrics.HTTP_LATENCY, method, route).observe(elapsed)
            if status == 429:
                code = _error_code(bytes(error_body))
                if code in RATE_LIMIT_CODES:
                    metrics.child(metrics.RATE_LIMIT_REJECTIONS, code, "http").inc()
            self._log(scope, route, method, status, elapsed, size)
            self._unbind(tokens)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        tokens = self._bind_context(scope)
        accepted = False
        close_code: int | None = None

        async def observed_send(message: Message) -> None:
            nonlocal accepted, close_code
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                metrics.WEBSOCKETS_OPEN.inc()
            elif message["type"] == "websocket.close":
                close_code = int(message.get("code", 1000))
                if close_code == WS_RATE_LIMITED:
                    metrics.child(metrics.RATE_LIMIT_REJECTIONS, "rate_limited", "websocket").inc()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            if accepted:
                metrics.WEBSOCKETS_OPEN.dec()
            route = _route(scope)
            status = 101 if accepted else 403
            metrics.child(metrics.HTTP_REQUESTS, "WEBSOCKET", route, str(status)).inc()
            self._log(scope, route, "WEBSOCKET", status, time.perf_counter() - started, 0, close_code=close_code)
            self._unbind(tokens)

    def _log(self, scope: Scope, route: str, method: str, status: int, elapsed: float, size: int, **extra: Any) -> None:
        path = str(scope.get("path", ""))
        level = logging.DEBUG if path in QUIET_PATHS and status < 400 else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        client = scope.get("client")
        query = _safe_query(scope.get("query_string", b""))
        access_log.log(
            level,
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "method": method,
                "path": path + (f"?{query}" if query else ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "bytes": size,
                "client": client[0] if client else None,
                **{k: v for k, v in extra.items() if v is not None},
            },
        )


def _error_code(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else None
