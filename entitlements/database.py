"""The API's connection pool, with every wait bounded, and which database errors are not the request's fault.

asyncpg's pool waits for a free connection without a limit, and hands a connection back only after a
cancelled statement's cancellation has been answered: against a stalled server (SIGSTOP, a frozen disk)
both waits last as long as the stall. `BoundedPool` gives every acquire (and so every release, which
asyncpg bounds by the acquire's timeout) `DB_ACQUIRE_TIMEOUT_S`; the connections' `command_timeout`
bounds each statement on the client's side, where the server's `statement_timeout` cannot fire.
"""

from __future__ import annotations

from typing import Any

import asyncpg

# SQLSTATE classes that say the database, not the request, is at fault: 08 connection exception,
# 53 insufficient resources (too many connections, disk full), 57 operator intervention (admin shutdown,
# cannot connect now, statement timeout), 58 system error (I/O).
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})
# Single states of other classes that a retry may well get past: serialization failure, deadlock, lock
# not available.
UNAVAILABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
# Raised without a SQLSTATE: the socket (refused, reset, timed out), the pool's or a statement's timeout,
# and asyncpg's own (the connection closed under a query, the pool closing).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, asyncpg.InterfaceError)


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means "the database did not serve this, try again soon" rather than a bug."""
    if isinstance(error, asyncpg.PostgresError):
        state = str(getattr(error, "sqlstate", "") or "")
        return state[:2] in UNAVAILABLE_SQLSTATE_CLASSES or state in UNAVAILABLE_SQLSTATES
    return isinstance(error, UNAVAILABLE_ERRORS)


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool whose acquires (and the releases that follow them) wait at most `acquire_timeout_s`
    unless the caller names another timeout."""

    __slots__ = ("acquire_timeout_s",)

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


async def bounded_pool(
    url: str,
    *,
    min_size: int,
    max_size: int,
    connect_timeout_s: float,
    acquire_timeout_s: float,
    command_timeout_s: float,
    statement_cache_size: int = 100,
    server_settings: dict[str, str],
    reset: Any = None,
    pool_class: type[BoundedPool] = BoundedPool,
) -> asyncpg.Pool:
    """Opens a `BoundedPool` (asyncpg's `create_pool` takes no pool class), with asyncpg's own defaults."""
    pool = pool_class(
        url,
        acquire_timeout_s=acquire_timeout_s,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        connect=None,
        setup=None,
        init=None,
        reset=reset,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=connect_timeout_s,
        command_timeout=command_timeout_s,
        statement_cache_size=statement_cache_size,
        server_settings=server_settings,
    )
    await pool
    return pool
