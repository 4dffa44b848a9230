"""Structured logs, the same for the API and the worker: JSON lines when not on a terminal (a file, a
pipe, a collector), readable console lines on one. Granian's own lines (start-up, workers) go through
the same renderer, so a log file holds nothing but JSON."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console", "auto"]


def uses_console(log_format: LogFormat) -> bool:
    return log_format == "console" or (log_format == "auto" and sys.stderr.isatty())


def _renderer(log_format: LogFormat) -> Any:
    return structlog.dev.ConsoleRenderer() if uses_console(log_format) else structlog.processors.JSONRenderer()


def configure_logging(log_format: LogFormat = "auto") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _renderer(log_format),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
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
