"""Structured logs, the same for the API and the worker: JSON lines when not on a terminal (a file, a
pipe, a collector), readable console lines on one. Granian's own lines (start-up, workers) go through
the same renderer, so a log file holds nothing but JSON."""

from __future__ import annotations

import logging
import re
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


# PostgreSQL's DETAIL of a refused row quotes the row ("Failing row contains (…)"): request content, such
# as a webhook's payload, that has no place in a log. The safety net for text that reached a log without
# its exception (the exception's own details are withheld exactly, below).
_FAILING_ROW = re.compile(r"Failing row contains \(.*?\)\.?(?=\n|$)", re.DOTALL)
WITHHELD = "(withheld from the log: it may quote request content)"


def _database_details(error: BaseException | None) -> list[str]:
    """The DETAIL texts of the asyncpg errors in an exception's chain (asyncpg appends them to str())."""
    details: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        detail = getattr(error, "detail", None)
        if type(error).__module__.startswith("asyncpg") and isinstance(detail, str) and detail:
            details.append(detail)
        error = error.__cause__ or error.__context__
    return details


def withhold_details(text: str, details: list[str]) -> str:
    for detail in details:
        text = text.replace(detail, WITHHELD)
    return _FAILING_ROW.sub(WITHHELD, text)


def error_text(error: BaseException) -> str:
    """`Type: message` of an error, to record or show, with database details withheld."""
    return withhold_details(f"{type(error).__name__}: {error}", _database_details(error))


def format_exc_info_withholding_details(logger: Any, method_name: str, event_dict: Any) -> Any:
    """structlog's format_exc_info, with database details withheld from the traceback and every other text."""
    exc_info = event_dict.get("exc_info")
    error: BaseException | None = None
    if isinstance(exc_info, BaseException):
        error = exc_info
    elif isinstance(exc_info, tuple):
        error = exc_info[1]
    elif exc_info:
        error = sys.exc_info()[1]
    details = _database_details(error)
    event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    for name, value in event_dict.items():
        if isinstance(value, str):
            event_dict[name] = withhold_details(value, details)
    return event_dict


_PRE_CHAIN: list[Any] = [
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    format_exc_info_withholding_details,
]


class _StdlibToStructlog(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging adds, so calling it again adds no second one."""


def route_stdlib_logging(log_format: LogFormat) -> None:
    """Lines of libraries that log through the standard library (asyncpg's pool warnings, with their
    tracebacks) rendered like ours: JSON off a terminal, never a plain traceback in the stream. Beside any
    handler already there (pytest's capture); a second call replaces the handler the first added."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, _StdlibToStructlog):
            root.removeHandler(handler)
    handler = _StdlibToStructlog(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=_renderer(log_format), foreign_pre_chain=_PRE_CHAIN)
    )
    root.addHandler(handler)


def configure_logging(log_format: LogFormat = "auto") -> None:
    console = uses_console(log_format)
    route_stdlib_logging(log_format)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            format_exc_info_withholding_details,
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
        "foreign_pre_chain": _PRE_CHAIN,
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
