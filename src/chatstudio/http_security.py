"""HTTP hardening as plain ASGI middleware (cheap on the streaming path): trusted proxy headers,
security headers on every response, and no TRACE."""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstudio.errors import AppError
from chatstudio.security import decode_access_token
from chatstudio.throttle import rate_headers

API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
_BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_BLOCKED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
MAX_REMEMBERED_PEERS = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> list[Network]:
    networks: list[Network] = []
    for value in values:
        value = value.strip()
        if value:
            networks.append(ipaddress.ip_network(value, strict=False))
    return networks


def _is_trusted(host: str | None, trusted: list[Network]) -> bool:
    if not host or not trusted:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)


class ProxyHeadersMiddleware:
    """Believe X-Forwarded-For / X-Forwarded-Proto only when the direct peer is a trusted proxy.

    The client is the right-most address in X-Forwarded-For that is not itself a trusted proxy, so a
    client cannot spoof its address by sending the header: the proxy appends the real one after it.
    """

    def __init__(self, app: ASGIApp, trusted: list[Network]) -> None:
        self.app = app
        self.trusted = trusted
        # Parsing an address costs more than the rest of this middleware; peers are few.
        self._peers: dict[str, bool] = {}

    def _trusted_peer(self, host: str) -> bool:
        known = self._peers.get(host)
        if known is None:
            if len(self._peers) >= MAX_REMEMBERED_PEERS:
                self._peers.clear()
            known = self._peers[host] = _is_trusted(host, self.trusted)
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.trusted:
            client = scope.get("client")
            if client and self._trusted_peer(client[0]):
                headers = dict(scope["headers"])
                forwarded_for = headers.get(b"x-forwarded-for", b"").decode("latin-1")
                hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
                while hops and self._trusted_peer(hops[-1]):
                    hops.pop()
                if hops:
                    scope["client"] = (hops[-1], 0)
                proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1].strip().lower()
                if proto in ("http", "https"):
                    scope["scheme"] = proto if scope["type"] == "http" else ("wss" if proto == "https" else "ws")
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in _BLOCKED_METHODS:
            await _refuse(send, 405, "method_not_allowed", "This method is not allowed.", _request_id(scope), [_ALLOW])
            return
        if b"%00" in scope.get("query_string", b"") or "\x00" in scope["path"]:
            # A NUL reaching a query breaks PostgreSQL text handling; no legitimate client sends one.
            await _refuse(send, 400, "invalid_request", "NUL characters are not allowed in URLs.", _request_id(scope))
            return
        authenticated = any(name == b"authorization" for name, _ in scope["headers"])
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in _BASE_HEADERS if h[0] not in present)
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", API_CSP.encode()))
                if authenticated:
                    # Per-user answers must never be kept by a shared cache. One with an ETag may be
                    # kept privately and revalidated (304); anything else is not stored at all.
                    headers = [h for h in headers if h[0].lower() != b"cache-control"]
                    policy = b"private, no-cache" if b"etag" in present else b"no-store"
                    headers.append((b"cache-control", policy))
                if https:
                    headers.append((b"strict-transport-security", HSTS.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cached_key_owner(scope: Scope, token: str) -> uuid.UUID | None:
    """The owner of an API key this instance recently accepted (apikeys.auth's cache), without I/O."""
    keys = getattr(scope["app"].state, "api_keys", None) if "app" in scope else None
    return keys.cached_user_id(token) if keys is not None else None


def _request_id(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", ""))


_ALLOW = (b"allow", b"GET, POST, PATCH, DELETE, OPTIONS, HEAD")


async def _refuse(
    send: Send,
    status: int,
    code: str,
    message: str,
    request_id: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error answered by the middleware itself, in the same body shape as main's error handler."""
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
                *_BASE_HEADERS,
                (b"content-security-policy", API_CSP.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RateLimitMiddleware:
    """The general limit (RATE_LIMIT_PER_MINUTE / _PER_HOUR) on the API, per user, else per client IP.

    The user is read from a validly signed access token without touching the database, so a flood
    of requests costs no queries. Redis trouble never fails a request: the throttle falls back to a
    per-instance limit.
    """

    PREFIXES = ("/api/", "/v1/", "/ws/")

    def __init__(self, app: ASGIApp, *, key: str, algorithm: str) -> None:
        self.app = app
        self.key = key
        self.algorithm = algorithm

    def identity(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token:
                    # An API key counts as its owner once this instance has accepted it (an in-memory
                    # look-up, no I/O); an unknown key is limited by IP, so random keys gain nothing.
                    owner = cached_key_owner(scope, token.strip())
                    if owner is not None:
                        return f"user:{owner}"
                    try:
                        claims = decode_access_token(token.strip(), key=self.key, algorithm=self.algorithm)
                    except AppError:
                        break
                    return f"user:{claims.user_id}"
                break
        client = scope.get("client")
        return f"ip:{client[0] if client else 'unknown'}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        throttle = getattr(scope["app"].state, "throttle", None) if "app" in scope else None
        if (
            scope["type"] not in ("http", "websocket")
            or throttle is None
            or not scope["path"].startswith(self.PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        decision = await throttle.request(self.identity(scope))
        headers = [(name.lower().encode(), value.encode()) for name, value in rate_headers(decision).items()]
        if not decision.allowed:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4429, "reason": "rate limited"})
                return
            retry_after = (b"retry-after", str(decision.retry_after).encode())
            await _refuse(send, 429, "rate_limited", "Too many requests.", _request_id(scope), [retry_after, *headers])
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
