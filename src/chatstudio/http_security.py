"""HTTP hardening, applied by the edge (chatstudio.edge): trusted proxy headers, security headers on
every response, no TRACE, and the pieces of the general rate limit."""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterable

from starlette.types import Scope, Send

from chatstudio.ratelimit import Decision

API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
_BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_CSP = (b"content-security-policy", API_CSP.encode())
# The common case, a response that set none of these itself, takes them all at once.
_ALL_SECURITY = [*_BASE_HEADERS, _CSP]
_SECURITY_NAMES = frozenset(name for name, _ in _ALL_SECURITY)
_HSTS = (b"strict-transport-security", HSTS.encode())
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


class TrustedProxies:
    """Believe X-Forwarded-For / X-Forwarded-Proto only when the direct peer is a trusted proxy.

    The client is the right-most address in X-Forwarded-For that is not itself a trusted proxy, so a
    client cannot spoof its address by sending the header: the proxy appends the real one after it.
    """

    def __init__(self, trusted: list[Network]) -> None:
        self.trusted = trusted
        # Parsing an address costs more than the rest of this; peers are few.
        self._peers: dict[str, bool] = {}

    def _trusted_peer(self, host: str) -> bool:
        known = self._peers.get(host)
        if known is None:
            if len(self._peers) >= MAX_REMEMBERED_PEERS:
                self._peers.clear()
            known = self._peers[host] = _is_trusted(host, self.trusted)
        return known

    def apply(self, scope: Scope, forwarded_for: bytes | None, forwarded_proto: bytes | None) -> None:
        """Rewrite the scope's client and scheme from the headers, when its peer may set them."""
        if not self.trusted:
            return
        client = scope.get("client")
        if not client or not self._trusted_peer(client[0]):
            return
        hops = [hop.strip() for hop in (forwarded_for or b"").decode("latin-1").split(",") if hop.strip()]
        while hops and self._trusted_peer(hops[-1]):
            hops.pop()
        if hops:
            scope["client"] = (hops[-1], 0)
        proto = (forwarded_proto or b"").decode("latin-1").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto if scope["type"] == "http" else ("wss" if proto == "https" else "ws")


def refusal(scope: Scope) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
    """What to answer instead of serving the request, when it must not reach the application."""
    if scope["method"] in _BLOCKED_METHODS:
        return 405, "method_not_allowed", "This method is not allowed.", [_ALLOW]
    if b"%00" in scope.get("query_string", b"") or "\x00" in scope["path"]:
        # A NUL reaching a query breaks PostgreSQL text handling; no legitimate client sends one.
        return 400, "invalid_request", "NUL characters are not allowed in URLs.", []
    return None


def secure_headers(
    headers: list[tuple[bytes, bytes]], *, authenticated: bool, https: bool
) -> list[tuple[bytes, bytes]]:
    """A response's headers with the security headers added where the response set none of its own."""
    present = {name.lower() for name, _ in headers}
    if authenticated and b"cache-control" in present:
        headers = [h for h in headers if h[0].lower() != b"cache-control"]
    if present.isdisjoint(_SECURITY_NAMES):
        headers.extend(_ALL_SECURITY)
    else:
        headers.extend(h for h in _BASE_HEADERS if h[0] not in present)
        if b"content-security-policy" not in present:
            headers.append(_CSP)
    if authenticated:
        # Per-user answers must never be kept by a shared cache. One with an ETag may be kept
        # privately and revalidated (304); anything else is not stored at all.
        headers.append((b"cache-control", b"private, no-cache" if b"etag" in present else b"no-store"))
    if https:
        headers.append(_HSTS)
    return headers


def cached_key_owner(scope: Scope, token: str) -> uuid.UUID | None:
    """The owner of an API key this instance recently accepted (apikeys.auth's cache), without I/O."""
    keys = getattr(scope["app"].state, "api_keys", None) if "app" in scope else None
    return keys.cached_user_id(token) if keys is not None else None


_ALLOW = (b"allow", b"GET, POST, PATCH, DELETE, OPTIONS, HEAD")


async def refuse(
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
                _CSP,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The general limit (RATE_LIMIT_PER_MINUTE / _PER_HOUR) covers the API, per user, else per client IP.
# The user is read from a validly signed token or a cached API key, without touching the database, so
# a flood of requests costs no queries. Redis trouble never fails a request: the throttle falls back
# to a per-instance limit.
RATE_LIMITED_PREFIXES = ("/api/", "/v1/", "/ws/")


def rate_limit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """The RateLimit-* headers of a decision, as raw ASGI headers."""
    return [
        (b"ratelimit-limit", b"%d" % decision.limit),
        (b"ratelimit-remaining", b"%d" % decision.remaining),
        (b"ratelimit-reset", b"%d" % decision.reset_after),
    ]
