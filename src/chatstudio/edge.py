"""The edge: the one ASGI layer every HTTP request and WebSocket passes before anything else.

In one frame and with one wrapped `send` it gives the request its id, binds the log context, believes
proxy headers only from trusted peers, refuses TRACE and NULs, applies the general rate limit, adds
the security, rate-limit and request-id headers to the response, and counts and logs the request.
It used to be five middleware classes; on the relay path each layer's frame, send wrapper and its
own look at the Authorization header (two of them decoded the same token) cost measurable throughput,
and on an idle WebSocket each layer kept a frame alive for the socket's life.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstudio.apikeys.service import is_api_key
from chatstudio.errors import AppError
from chatstudio.http_security import (
    RATE_LIMITED_PREFIXES,
    Network,
    TrustedProxies,
    cached_key_owner,
    rate_limit_headers,
    refusal,
    refuse,
    secure_headers,
)
from chatstudio.observability import metrics
from chatstudio.observability.logging import route_var
from chatstudio.observability.middleware import (
    bind_context,
    record_http,
    record_websocket,
    route_of,
    unbind_context,
)
from chatstudio.security import decode_access_token

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
WS_RATE_LIMITED = 4429
MAX_ERROR_BODY = 4096
# Request ids need to be unique, not secret: a per-process generator seeded from the OS is enough,
# and a uuid4 (a getrandom() call per request) measurably is not free.
_ids = random.Random()  # noqa: S311 - unique ids, not secrets


def new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


class Edge:
    def __init__(self, app: ASGIApp, *, key: str, algorithm: str, trusted: list[Network]) -> None:
        self.app = app
        self.key = key
        self.algorithm = algorithm
        self.proxies = TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _enter(self, scope: Scope) -> tuple[str, str | None, bool, tuple[Any, Any, Any]]:
        """One pass over the headers: request id, caller, proxy rewrite, log context."""
        request_id = authorization = forwarded_for = forwarded_proto = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value
            elif name == REQUEST_ID_HEADER:
                if request_id is None:
                    request_id = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded_for = value
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
        if request_id is None or not _VALID_REQUEST_ID.match(request_id):
            request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        user_id = self._caller(scope, authorization)
        self.proxies.apply(scope, forwarded_for, forwarded_proto)
        return request_id, user_id, authorization is not None, bind_context(request_id, user_id)

    def _caller(self, scope: Scope, authorization: bytes | None) -> str | None:
        """The user a bearer credential names, without I/O: a cached API key's owner or a valid
        access token's subject. Unknown keys and bad tokens name nobody (the routes refuse them)."""
        if authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if is_api_key(token):
            owner = cached_key_owner(scope, token)
            return str(owner) if owner is not None else None
        try:
            return str(decode_access_token(token, key=self.key, algorithm=self.algorithm).user_id)
        except AppError:
            return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id, user_id, authenticated, context = self._enter(scope)
        https = scope.get("scheme") == "https"
        request_id_header = (REQUEST_ID_HEADER, request_id.encode())
        extra_headers: list[tuple[bytes, bytes]] = []
        status = 500
        size = 0
        error_body = bytearray()

        async def edge_send(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route_var.set(route_of(scope))  # log lines written while the body streams name it too
                headers = secure_headers(
                    [*message.get("headers", []), *extra_headers], authenticated=authenticated, https=https
                )
                headers.append(request_id_header)
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                size += len(body)
                if status == 429 and len(error_body) < MAX_ERROR_BODY:
                    error_body.extend(body[:MAX_ERROR_BODY])
            await send(message)

        metrics.HTTP_IN_FLIGHT.inc()
        try:
            refused = refusal(scope)
            if refused is not None:
                refused_status, code, text, headers = refused
                await refuse(edge_send, refused_status, code, text, request_id, headers)
                return
            throttle = self._throttle(scope)
            if throttle is not None:
                decision = await throttle.request(_identity(scope, user_id))
                limit_headers = rate_limit_headers(decision)
                if not decision.allowed:
                    retry_after = (b"retry-after", str(decision.retry_after).encode())
                    await refuse(
                        edge_send, 429, "rate_limited", "Too many requests.", request_id, [retry_after, *limit_headers]
                    )
                    return
                extra_headers = limit_headers
            await self.app(scope, receive, edge_send)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            record_http(scope, status, time.perf_counter() - started, size, bytes(error_body))
            unbind_context(context)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        _, user_id, _, context = self._enter(scope)
        accepted = False
        close_code: int | None = None

        async def edge_send(message: Message) -> None:
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
            throttle = self._throttle(scope)
            if throttle is not None and not (await throttle.request(_identity(scope, user_id))).allowed:
                await edge_send({"type": "websocket.close", "code": WS_RATE_LIMITED, "reason": "rate limited"})
                return
            await self.app(scope, receive, edge_send)
        finally:
            if accepted:
                metrics.WEBSOCKETS_OPEN.dec()
            record_websocket(scope, accepted, close_code, time.perf_counter() - started)
            unbind_context(context)

    @staticmethod
    def _throttle(scope: Scope) -> Any:
        """The general rate limit, for the API's paths, once the application has started."""
        if not scope["path"].startswith(RATE_LIMITED_PREFIXES) or "app" not in scope:
            return None
        return getattr(scope["app"].state, "throttle", None)


def _identity(scope: Scope, user_id: str | None) -> str:
    if user_id is not None:
        return f"user:{user_id}"
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"
