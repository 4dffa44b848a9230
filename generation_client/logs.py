"""Structured logs, the same for the API and the worker: JSON lines when not on a terminal (a file, a
pipe, a collector), readable console lines on one. Granian's own lines (start-up, workers) go through
the same renderer, so a log file holds nothing but JSON."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import msgspec
import structlog

LogFormat = Literal["json", "console", "auto"]


def uses_console(log_format: LogFormat) -> bool:
    return log_format == "console" or (log_format == "auto" and sys.stderr.isatty())


_json_encoder = msgspec.json.Encoder(enc_hook=str)


def _json_bytes(event: Any, **_: Any) -> bytes:
    # msgspec instead of the json module: the request line is written on every request.
    return _json_encoder.encode(event)


def _json_text(event: Any, **_: Any) -> str:
    return _json_encoder.encode(event).decode()


def _renderer(log_format: LogFormat) -> Any:
    if uses_console(log_format):
        return structlog.dev.ConsoleRenderer()
    return structlog.processors.JSONRenderer(serializer=_json_text)


def configure_logging(log_format: LogFormat = "auto") -> None:
    console = uses_console(log_format)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer(serializer=_json_bytes),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # JSON lines go to stderr as bytes, one write per line, without an encode step per event.
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr)
        if console
        else structlog.BytesLoggerFactory(file=sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )


def granian_log_config(log_format: LogFormat = "auto") -> dict[str, Any]:
    """A `log_dictconfig` for granian: its messages rendered like ours, to stderr."""
    formatter = {
        "()": structlog.stdlib.ProcessorFormatter,
        "processor": _renderer(log_format),
        "foreign_pre_chain": [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
    }
    handler = {"formatter": "structured", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"generic": formatter, "access": formatter, "structured": formatter},
        "handlers": {"console": handler, "access": handler},
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
