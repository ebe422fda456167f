"""The ASGI side of observability: what the edge (chatstudio.edge) records of every request, HTTP and
WebSocket: metrics and an access-log line, labelled with the route template, never the raw path."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

from chatstudio.observability import metrics
from chatstudio.observability.logging import ACCESS_LOGGER, AccessWriter, request_id_var, route_var, user_id_var
from chatstudio.observability.redaction import SENSITIVE_NAMES

access_log = logging.getLogger(ACCESS_LOGGER)
_access_writer = AccessWriter(access_log)

UNMATCHED = "<unmatched>"
RATE_LIMIT_CODES = frozenset({"rate_limited", "too_many_attempts"})
# Probes and scrapes every few seconds would drown the access log; they go at DEBUG.
QUIET_PATHS = frozenset({"/health", "/health/ready", "/metrics"})


@dataclass(frozen=True, slots=True)
class RouteLabel:
    """For `scope["route"]`, set by endpoints served in front of the router (main._edge), which has no
    route object to put there: what the metrics and the access log read of a route."""

    path_format: str


def route_of(scope: Scope) -> str:
    """The matched route's template with the prefixes it was included under (`/api/v1/...`).

    A route included from a router knows only its own part of the path, so the prefix is whatever
    precedes the part its pattern matches in the actual path.
    """
    route = scope.get("route")
    if type(route) is RouteLabel:  # its template is the whole path (and a getattr miss raises inside)
        return route.path_format
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


def bind_context(request_id: str, user_id: str | None) -> tuple[Any, Any, Any]:
    """The request's id and caller on every log line written while it runs."""
    return (request_id_var.set(request_id or None), user_id_var.set(user_id), route_var.set(None))


def unbind_context(tokens: tuple[Any, Any, Any]) -> None:
    request_id_var.reset(tokens[0])
    user_id_var.reset(tokens[1])
    route_var.reset(tokens[2])


def record_http(scope: Scope, status: int, elapsed: float, size: int, error_body: bytes) -> None:
    """Metrics and the access-log line of one finished HTTP request."""
    route = route_of(scope)
    method = str(scope.get("method", "GET"))
    metrics.child(metrics.HTTP_REQUESTS, method, route, str(status)).inc()
    metrics.child(metrics.HTTP_LATENCY, method, route).observe(elapsed)
    if status == 429:
        code = _error_code(error_body)
        if code in RATE_LIMIT_CODES:
            metrics.child(metrics.RATE_LIMIT_REJECTIONS, code, "http").inc()
    _log(scope, route, method, status, elapsed, size)


def record_websocket(scope: Scope, accepted: bool, close_code: int | None, elapsed: float) -> None:
    route = route_of(scope)
    status = 101 if accepted else 403
    metrics.child(metrics.HTTP_REQUESTS, "WEBSOCKET", route, str(status)).inc()
    _log(scope, route, "WEBSOCKET", status, elapsed, 0, close_code=close_code)


def _log(scope: Scope, route: str, method: str, status: int, elapsed: float, size: int, **extra: Any) -> None:
    path = str(scope.get("path", ""))
    level = logging.DEBUG if path in QUIET_PATHS and status < 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    client = scope.get("client")
    query = _safe_query(scope.get("query_string", b""))
    fields = {
        "method": method,
        "path": path + (f"?{query}" if query else ""),
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
        "bytes": size,
        "client": client[0] if client else None,
        **{k: v for k, v in extra.items() if v is not None},
    }
    message = f"{method} {path} {status}"
    if _access_writer.write(level, message, fields):
        return
    access_log.log(level, "%s %s %d", method, path, status, extra=fields)


def _error_code(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else None
