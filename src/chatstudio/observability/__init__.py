"""Metrics, structured logs, error reporting, compression and response caching.

Kept import-light on purpose: `metrics` and `redaction` import no web framework, so layers that must
not know one can still report. The app-facing entry point is `chatstudio.observability.setup`.
"""
