"""The logs: every line JSON off a terminal, the standard library's included (asyncpg's pool warnings
carry tracebacks), and no request content from PostgreSQL's details ("Failing row contains (…)")."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import asyncpg
import pytest
import structlog

from generation_client.logs import WITHHELD, configure_logging, error_text

SECRET = "cus_secret_payload_fragment"


def refused_row() -> asyncpg.CheckViolationError:
    error = asyncpg.CheckViolationError('new row for relation "stripe_events" violates check constraint')
    error.detail = f"Failing row contains (evt_1, {SECRET}, 2026-12-01 00:00:00+00)."
    return error


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.TextIOWrapper]:
    """The process's stderr, as configure_logging writes it (text and bytes into one buffer)."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("json")
    yield stream
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_StdlibToStructlog":
            root.removeHandler(handler)


def lines(stream: io.TextIOWrapper) -> list[dict[str, object]]:
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    err = buffer.getvalue().decode()
    parsed = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert parsed, "nothing was logged"
    return parsed


def test_a_standard_library_warning_with_a_traceback_is_one_json_line(json_logs: io.TextIOWrapper) -> None:
    try:
        raise ConnectionResetError("the connection was reset")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").warning("Pool.release() failed", exc_info=True)
    (line,) = lines(json_logs)
    assert line["event"] == "Pool.release() failed"
    assert line["level"] == "warning"
    assert "ConnectionResetError" in str(line["exception"])


def test_database_details_are_withheld_from_our_tracebacks(json_logs: io.TextIOWrapper) -> None:
    try:
        raise refused_row()
    except asyncpg.CheckViolationError:
        structlog.get_logger("test").exception("stripe_event_failed")
    (line,) = lines(json_logs)
    assert SECRET not in json.dumps(line)
    assert WITHHELD in str(line["exception"])
    assert "violates check constraint" in str(line["exception"])


def test_and_from_the_standard_librarys(json_logs: io.TextIOWrapper) -> None:
    try:
        raise RuntimeError("wrapped") from refused_row()
    except RuntimeError:
        logging.getLogger("asyncpg").error("query failed", exc_info=True)
    (line,) = lines(json_logs)
    assert SECRET not in json.dumps(line)


def test_and_from_a_text_that_quotes_one(json_logs: io.TextIOWrapper) -> None:
    structlog.get_logger("test").warning("failed", error=str(refused_row()))
    (line,) = lines(json_logs)
    assert SECRET not in json.dumps(line)
    assert WITHHELD in str(line["error"])


def test_error_text_keeps_the_message_and_withholds_the_detail() -> None:
    text = error_text(refused_row())
    assert text.startswith("CheckViolationError: new row for relation")
    assert SECRET not in text
