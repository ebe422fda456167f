"""Prometheus metrics: definitions, the provider-stream observer and the exposition.

No web framework here (the ASGI side is in `middleware.py`), so the provider layer may report too.

Several uvicorn workers share one view through prometheus_client's multiprocess mode:
`prepare_multiprocess()` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start, every worker writes its samples there, and whichever worker (or the PROMETHEUS_PORT server in
the parent) answers a scrape reads them all. Gauges use `livesum`, so a worker that stops takes its
share with it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from chatstudio.llm.base import LLMError, StreamEvent, TextDelta, Usage, WireChunk

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Request latency: API calls are tens of ms, streamed turns can run for minutes.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

HTTP_REQUESTS = Counter("chatstudio_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "chatstudio_http_request_duration_seconds",
    "Time from the request to the end of the response body",
    ["method", "route"],
    buckets=_HTTP_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("chatstudio_http_requests_in_flight", "HTTP requests being handled", multiprocess_mode="livesum")
WEBSOCKETS_OPEN = Gauge("chatstudio_websockets_open", "Accepted WebSocket connections", multiprocess_mode="livesum")
RATE_LIMIT_REJECTIONS = Counter(
    "chatstudio_rate_limit_rejections_total", "Requests refused by a rate limit", ["code", "transport"]
)
PROVIDER_CALLS = Counter(
    "chatstudio_provider_requests_total",
    "Calls to model providers (retries included)",
    ["provider", "model", "outcome"],
)
PROVIDER_ERRORS = Counter(
    "chatstudio_provider_errors_total", "Provider calls that failed, by error code", ["provider", "model", "code"]
)
PROVIDER_LATENCY = Histogram(
    "chatstudio_provider_request_duration_seconds",
    "Time from the call to the end of the provider's stream",
    ["provider", "model"],
    buckets=_HTTP_BUCKETS,
)
PROVIDER_TTFT = Histogram(
    "chatstudio_provider_time_to_first_token_seconds",
    "Time from the call to the first text delta",
    ["provider", "model"],
    buckets=_TTFT_BUCKETS,
)
PROVIDER_TOKENS = Counter(
    "chatstudio_provider_tokens_total", "Tokens reported by providers", ["provider", "model", "direction"]
)
DB_POOL_IN_USE = Gauge(
    "chatstudio_db_pool_connections_in_use", "Database connections checked out", multiprocess_mode="livesum"
)
DB_POOL_CAPACITY = Gauge(
    "chatstudio_db_pool_connections_max",
    "Most connections the pools may hold (size + overflow)",
    multiprocess_mode="livesum",
)

# Provider model names come from clients (any OpenAI-compatible server accepts anything): bound them.
_SAFE_LABEL = re.compile(r"[^A-Za-z0-9._:/@-]")
MAX_LABEL_LENGTH = 80


def label(value: str) -> str:
    return _SAFE_LABEL.sub("_", value)[:MAX_LABEL_LENGTH] or "unknown"


_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}
MAX_CHILDREN = 10_000


def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: the library validates and locks on every call, which
    on the hot path costs more than the increment itself."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= MAX_CHILDREN:
            _CHILDREN.clear()
        found = _CHILDREN[key] = metric.labels(*values)
    return found


class ProviderCall:
    """Times and counts one provider call. The registry hands it each event and then the call's end,
    in line: a wrapping generator cost a frame per event and an extra close on every completion."""

    __slots__ = ("_first", "_model", "_provider", "_started")

    def __init__(self, provider: str, model: str) -> None:
        self._provider, self._model = label(provider), label(model)
        self._started = time.perf_counter()
        self._first = True

    def event(self, event: StreamEvent) -> None:
        if self._first and isinstance(event, TextDelta | WireChunk):
            self._first = False
            child(PROVIDER_TTFT, self._provider, self._model).observe(time.perf_counter() - self._started)
        elif isinstance(event, Usage):
            child(PROVIDER_TOKENS, self._provider, self._model, "input").inc(max(0, event.input_tokens))
            child(PROVIDER_TOKENS, self._provider, self._model, "output").inc(max(0, event.output_tokens))

    def end(self, error: BaseException | None = None) -> None:
        """`error`: what ended the call early. GeneratorExit means the consumer stopped reading (a
        client left, or a fallback took over)."""
        provider, model = self._provider, self._model
        if error is None:
            outcome = "ok"
        elif isinstance(error, GeneratorExit):
            outcome = "cancelled"
        else:
            outcome = "error"
            code = label(error.code) if isinstance(error, LLMError) else "internal"
            child(PROVIDER_ERRORS, provider, model, code).inc()
        child(PROVIDER_CALLS, provider, model, outcome).inc()
        child(PROVIDER_LATENCY, provider, model).observe(time.perf_counter() - self._started)


def instrument_pool(engine: Any, capacity: int) -> None:
    """Count checked-out connections of an SQLAlchemy engine's pool; `capacity` is size + overflow."""
    from sqlalchemy import event

    pool = engine.sync_engine.pool
    DB_POOL_CAPACITY.inc(capacity)

    @event.listens_for(pool, "checkout")
    def _checkout(*_: Any) -> None:
        DB_POOL_IN_USE.inc()

    @event.listens_for(pool, "checkin")
    def _checkin(*_: Any) -> None:
        DB_POOL_IN_USE.dec()


def release_pool(capacity: int) -> None:
    DB_POOL_CAPACITY.dec(capacity)


# exposition


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare_multiprocess(workers: int, base: Path | None = None) -> Path | None:
    """Before several workers start: a fresh shared directory for their samples (left alone if the
    operator set PROMETHEUS_MULTIPROC_DIR, except that it is emptied: old pids would haunt the sums)."""
    configured = multiprocess_dir()
    if workers <= 1 and configured is None:
        return None
    if configured is None:
        configured = Path(tempfile.mkdtemp(prefix="chatstudio-metrics-", dir=base))
        os.environ[MULTIPROC_ENV] = str(configured)
        atexit.register(shutil.rmtree, configured, ignore_errors=True)
    else:
        shutil.rmtree(configured, ignore_errors=True)
    configured.mkdir(parents=True, exist_ok=True)
    return configured


def _pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    for path in directory.glob("*.db"):
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fixed(pid: int) -> Callable[[], int]:
    return lambda: pid


class WorkersCollector(Collector):
    """Every worker's samples, plus the process metrics (memory, CPU, fds) of each live worker, labelled
    by pid: prometheus_client's own process collector reports only the process serving the scrape."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        # A worker that died without its shutdown (killed, crashed) must not count in the live gauges.
        for pid in _pids(self.directory):
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
        collector = multiprocess.MultiProcessCollector(None, path=str(self.directory))  # type: ignore[no-untyped-call]
        yield from collector.collect()  # type: ignore[no-untyped-call]
        merged: dict[str, Metric] = {}
        for pid in sorted(_pids(self.directory)):
            if not _alive(pid):
                continue
            for metric in ProcessCollector(pid=_fixed(pid), registry=None).collect():
                target = merged.setdefault(metric.name, Metric(metric.name, metric.documentation, metric.type))
                for sample in metric.samples:
                    target.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from merged.values()


def mark_worker_stopped() -> None:
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]


def _registry() -> CollectorRegistry:
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(WorkersCollector(directory))
    return registry


def exposition() -> bytes:
    """The current metrics in Prometheus text format (all workers' when several run)."""
    return generate_latest(_registry())


def start_metrics_server(port: int, host: str) -> Any:
    """PROMETHEUS_PORT: a separate listener, started once by the process that starts the workers."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=_registry())
