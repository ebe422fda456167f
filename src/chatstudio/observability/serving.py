"""What `chatstudio serve` prepares before uvicorn starts its workers: the shared metrics directory,
the PROMETHEUS_PORT listener, and the logging configuration every worker applies."""

from __future__ import annotations

import logging
from typing import Any

from chatstudio.observability import metrics
from chatstudio.observability.logging import uvicorn_log_config

log = logging.getLogger("chatstudio")


def prepare_server(settings: Any, *, workers: int, host: str) -> dict[str, Any]:
    """Returns the extra keyword arguments for `uvicorn.run`."""
    metrics.prepare_multiprocess(workers)
    if settings.prometheus_port is not None:
        metrics.start_metrics_server(settings.prometheus_port, host)
    return {"log_config": uvicorn_log_config(settings), "access_log": False}
