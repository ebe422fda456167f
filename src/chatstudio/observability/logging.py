"""Structured logs: one JSON object per line (LOG_FORMAT=text for a terminal), request context on every
line, secrets redacted at the handler, optional rotating file output (LOG_FILE).

`uvicorn_log_config()` is handed to uvicorn, which applies it in every worker process; its own access
log is replaced by ours (`chatstudio.access`, written by the observability middleware).
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import os
import time
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

from chatstudio.observability.redaction import Redactor, secret_values

ACCESS_LOGGER = "chatstudio.access"
TRACE = 5  # uvicorn's level below DEBUG

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
user_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)
route_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("route", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message", "taskName"}


def _context() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, var in (("request_id", request_id_var), ("user_id", user_id_var), ("route", route_var)):
        value = var.get()
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            **_context(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = record.exc_text or "".join(traceback.format_exception(*record.exc_info))
        return dumps_line(entry)


def dumps_line(entry: dict[str, Any]) -> str:
    """One log line's JSON. orjson writes it in a tenth of the standard encoder's time (a line is
    written for every request); the standard one takes what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(entry, ensure_ascii=False, default=str)


class AccessWriter:
    """Writes access-log lines straight to the one console handler of the shipped configuration.

    Through `Logger.log` an access line costs ~28 µs (a LogRecord, two filter passes, a lock, the
    formatter's scan of every record attribute), the largest single item of a relayed completion's
    overhead. When the configuration is exactly the shipped one (one StreamHandler with our JSON
    formatter and redacting filter, no other handler or filter on the way) this writes the same line
    the formatter would, after the same redaction screen. Anything else (a log file, text format,
    pytest's capture, a line the screen flags) returns False and the caller logs the usual way.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: tuple[Any, ...] | None = None
        self._handler: logging.StreamHandler[Any] | None = None
        self._redactor: Redactor | None = None
        self._pid = os.getpid()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, now: float) -> str:
        """The formatter's `ts`, with the date and time formatted once per second, not per line."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"

    def _route(self) -> tuple[logging.StreamHandler[Any] | None, Redactor | None]:
        seen = []
        handlers: list[logging.Handler] = []
        logger: logging.Logger | None = self._logger
        while logger is not None:
            seen.append((tuple(logger.handlers), tuple(logger.filters), logger.propagate))
            handlers.extend(logger.handlers)
            logger = logger.parent if logger.propagate else None
        key = (tuple(seen), logging.root.manager.disable)
        if key != self._seen:
            self._seen = key
            self._handler, self._redactor = None, None
            filters_on_loggers = any(filters for _, filters, _ in seen)
            if len(handlers) == 1 and not filters_on_loggers and logging.root.manager.disable == 0:
                handler = handlers[0]
                if (
                    type(handler) is logging.StreamHandler
                    and type(handler.formatter) is JsonFormatter
                    and len(handler.filters) == 1
                    and isinstance(handler.filters[0], RedactingFilter)
                ):
                    self._handler, self._redactor = handler, handler.filters[0].redact
        return self._handler, self._redactor

    def write(self, level: int, message: str, fields: dict[str, Any]) -> bool:
        """True when the line was written. The screen reads the message and every text field, as
        RedactingFilter's does for a record."""
        handler, redactor = self._route()
        if handler is None or redactor is None or level < handler.level:
            return False
        texts = [value for value in fields.values() if isinstance(value, str)]
        if redactor.might_hold_secret("\n".join((message, *texts))):
            return False
        entry: dict[str, Any] = {
            "ts": self._timestamp(time.time()),
            "level": logging.getLevelName(level).lower(),
            "logger": self._logger.name,
            "message": message,
            "pid": self._pid,
            **_context(),
            **fields,
        }
        line = dumps_line(entry) + handler.terminator
        try:
            with handler.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                handler.stream.write(line)
                handler.flush()
        except Exception:  # noqa: BLE001 - the usual path reports what went wrong
            return False
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={v}" for k, v in _context().items())
        return f"{line} [{context}]" if context else line


class RedactingFilter(logging.Filter):
    """Runs at the handler, so no formatter, file or collector ever sees a secret."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.redact = Redactor(secrets or ())

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info))
        fields = record.__dict__
        extra = [key for key, value in fields.items() if key not in _STANDARD and isinstance(value, str | dict | list)]
        if all(isinstance(fields[key], str) for key in extra):
            # Plain strings only (an access line): one screen for the hints over all of them together,
            # instead of one per field; only a hit pays for the patterns below.
            texts = [message, record.exc_text or "", *(fields[key] for key in extra)]
            if not self.redact.might_hold_secret("\n".join(texts)):
                record.msg = message
                return True
        record.msg = self.redact(message)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for key in extra:
            fields[key] = self.redact.scrub(fields[key])
        return True


def _level(settings: Any) -> int:
    name = str(settings.log_level).upper()
    return TRACE if name == "TRACE" else logging.getLevelName(name)


def logging_config(settings: Any) -> dict[str, Any]:
    """A dictConfig for the whole process: our handlers on the root logger, uvicorn's loggers routed
    into them, uvicorn's access log off (ours replaces it)."""
    text = getattr(settings, "log_format", "json") == "text"
    handlers: dict[str, Any] = {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "text" if text else "json",
            "filters": ["redact"],
        }
    }
    log_file = getattr(settings, "log_file", None)
    if log_file:
        # Several workers write one file; this handler locks around writes and rotation.
        handlers["file"] = {
            "class": "concurrent_log_handler.ConcurrentRotatingFileHandler",
            "filename": str(log_file),
            "maxBytes": settings.log_file_max_bytes,
            "backupCount": settings.log_file_backup_count,
            "encoding": "utf-8",
            "formatter": "json",
            "filters": ["redact"],
        }
    level = _level(settings)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter, "secrets": secret_values(settings)}},
        "formatters": {"json": {"()": JsonFormatter}, "text": {"()": TextFormatter}},
        "handlers": handlers,
        "root": {"level": level, "handlers": list(handlers)},
        "loggers": {
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": logging.CRITICAL + 1, "handlers": [], "propagate": False},
            # Connection chatter of the HTTP clients would log request URLs at DEBUG.
            "httpx": {"level": max(level, logging.WARNING)},
            "httpcore": {"level": max(level, logging.WARNING)},
        },
    }


def uvicorn_log_config(settings: Any) -> dict[str, Any]:
    logging.addLevelName(TRACE, "TRACE")
    # No formatter of ours prints the caller, thread or process name; finding them costs a stack
    # walk and two look-ups on every record (a third of an access-log line).
    logging._srcfile = None  # the logging HOWTO's documented switch: "set to None to skip caller lookup"
    logging.logThreads = False
    logging.logMultiprocessing = False
    return logging_config(settings)


def configure_logging(settings: Any) -> None:
    """For processes that are not uvicorn's (the CLI's one-shot commands, tests)."""
    logging.config.dictConfig(uvicorn_log_config(settings))
