"""Which database errors are the database's fault (503, retry) and which are the request's or a bug."""

from __future__ import annotations

import asyncpg
import pytest

from entitlements.database import is_unavailable


def postgres_error(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return cls("message")


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "reset"),
        OSError(113, "No route to host"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("pool is closing"),
        postgres_error(asyncpg.exceptions.CannotConnectNowError),
        postgres_error(asyncpg.exceptions.AdminShutdownError),
        postgres_error(asyncpg.exceptions.QueryCanceledError),
        postgres_error(asyncpg.exceptions.TooManyConnectionsError),
        postgres_error(asyncpg.exceptions.DiskFullError),
        postgres_error(asyncpg.exceptions.SerializationError),
        postgres_error(asyncpg.exceptions.DeadlockDetectedError),
        postgres_error(asyncpg.exceptions.LockNotAvailableError),
        postgres_error(asyncpg.exceptions.ConnectionFailureError),
    ],
    ids=lambda error: type(error).__name__,
)
def test_the_database_not_answering_is_unavailable(error: BaseException) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        postgres_error(asyncpg.exceptions.UniqueViolationError),
        postgres_error(asyncpg.exceptions.CheckViolationError),
        postgres_error(asyncpg.exceptions.UndefinedTableError),
        postgres_error(asyncpg.exceptions.DataError),
        ValueError("bug"),
        KeyError("bug"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_bug_or_the_requests_fault_is_not(error: BaseException) -> None:
    assert not is_unavailable(error)
