"""One redactor for logs and error reports: the server's own secrets by value, and credentials by shape.

The server knows its secrets (signing key, provider keys, database and Redis passwords, tokens for
Sentry and the metrics endpoint), so they are removed wherever they appear, even inside a provider's
error text that echoes a key back. Credentials the server cannot know in advance (a user's bearer
token, a password in a URL or a JSON body) are removed by their shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

MASK = "[REDACTED]"
# Shorter values would also match ordinary words; such "secrets" are refused elsewhere anyway.
MIN_SECRET_LENGTH = 8
SENSITIVE_NAMES = frozenset(
    {
        "password",
        "new_password",
        "current_password",
        "passwd",
        "secret",
        "secret_key",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "x-api-key",
        "authorization",
        "cookie",
        "set-cookie",
        "dsn",
        "private_key",
    }
)

_PATTERNS = (
    # JSON Web Tokens (our access tokens, and anyone else's)
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # Authorization header values
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    # provider key shapes: sk-..., sk-ant-..., hf_..., co-style long keys are caught by value
    (re.compile(r"\b(sk|pk|rk|cs)-[A-Za-z0-9_-]{12,}"), MASK),
    (re.compile(r"\bhf_[A-Za-z0-9]{12,}"), MASK),
    # passwords in URLs: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), r"\1" + MASK + "@"),
    # name=value and "name": "value" pairs whose name says secret
    (
        re.compile(
            r"(?i)([\"']?\b(?:password|passwd|secret|token|api[_-]?key|access_token|refresh_token)[\"']?\s*[:=]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&}]+)"
        ),
        r"\1" + MASK,
    ),
)


# Every pattern above needs one of these (lower-cased) in the text to match.
_HINTS = (
    "eyj",
    "bearer",
    "basic",
    "token",
    "sk-",
    "pk-",
    "rk-",
    "cs-",
    "hf_",
    "://",
    "password",
    "passwd",
    "secret",
    "apikey",
    "api_key",
    "api-key",
)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(values, key=len, reverse=True)
        self._literal = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None
        self._values = tuple(ordered)

    def __call__(self, text: str) -> str:
        if not self.might_hold_secret(text):
            return text
        if self._literal is not None:
            text = self._literal.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def might_hold_secret(self, text: str) -> bool:
        """Most log text holds no secret; a few substring tests say so far faster than the patterns."""
        lowered = text.lower()
        return any(hint in lowered for hint in _HINTS) or any(value in text for value in self._values)

    def scrub(self, value: Any, depth: int = 0) -> Any:
        """A copy of a JSON-like structure with sensitive keys masked and every string redacted."""
        if depth > 20:
            return MASK
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {
                key: MASK if str(key).lower() in SENSITIVE_NAMES else self.scrub(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.scrub(item, depth + 1) for item in value]
        return value

    @classmethod
    def from_settings(cls, settings: Any) -> Redactor:
        return cls(secret_values(settings))


def secret_values(settings: Any) -> list[str]:
    """Every secret a Settings object holds, as plain strings."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
    for name in ("database_url", "redis_url"):
        url = getattr(settings, name, None)
        if url:
            password = urlsplit(str(url)).password
            if password:
                values.append(password)
    for endpoint in getattr(settings, "openai_compatible_endpoints", None) or []:
        key = endpoint.get("api_key") if isinstance(endpoint, Mapping) else None
        if key:
            values.append(str(key))
    return values
