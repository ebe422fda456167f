"""Error reporting to Sentry (SENTRY_DSN), with nothing secret in what is sent.

No request bodies, no cookies, no local variables (a frame may hold a password or a provider key),
sensitive headers masked, and every string of the event run through the same redactor as the logs.
"""

from __future__ import annotations

from typing import Any

from chatstudio.observability.redaction import MASK, SENSITIVE_NAMES, Redactor

_KEEP_HEADERS = frozenset({"content-type", "content-length", "user-agent", "accept", "x-request-id", "host"})


def _scrub_request(request: dict[str, Any]) -> None:
    request.pop("data", None)
    request.pop("cookies", None)
    headers = request.get("headers")
    if isinstance(headers, dict):
        request["headers"] = {k: (v if k.lower() in _KEEP_HEADERS else MASK) for k, v in headers.items()}
    if request.get("query_string"):
        request["query_string"] = (
            MASK
            if any(n in str(request["query_string"]).lower() for n in SENSITIVE_NAMES)
            else (request["query_string"])
        )


def make_before_send(redactor: Redactor) -> Any:
    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        request = event.get("request")
        if isinstance(request, dict):
            _scrub_request(request)
        scrubbed: dict[str, Any] = redactor.scrub(event)
        return scrubbed

    return before_send


def make_before_breadcrumb(redactor: Redactor) -> Any:
    def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        scrubbed: dict[str, Any] = redactor.scrub(crumb)
        return scrubbed

    return before_breadcrumb


def init_sentry(settings: Any, redactor: Redactor, release: str) -> bool:
    """Start the Sentry client when SENTRY_DSN is set; returns whether it started."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        release=f"chatstudio@{release}",
        # What integrations collect: no user data, bodies, cookies, frame variables or AI prompts; only
        # harmless headers. before_send still redacts whatever gets through.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "allowlist", "terms": sorted(_KEEP_HEADERS)}},
            "http_bodies": [],
            "url_query_params": {"mode": "denylist", "terms": sorted(SENSITIVE_NAMES)},
            "gen_ai": {"inputs": False, "outputs": False},
            "database_query_data": False,
            "stack_frame_variables": False,
        },
        max_request_body_size="never",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        before_send=make_before_send(redactor),
        before_send_transaction=make_before_send(redactor),
        before_breadcrumb=make_before_breadcrumb(redactor),
    )
    return True
