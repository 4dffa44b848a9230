"""The suites' PgBouncer switch: with MOMENTS_TEST_PGBOUNCER=1 (`make pgbouncer`), every API process the
tests start (`tests/support/processes.py`) reaches its database through a real PgBouncer in transaction
mode, with a server pool smaller than its own, and keeps a direct URL for LISTEN and the migrations.

One PgBouncer per PostgreSQL server, started at its first use and stopped when the test run ends; the
tests' own connections (setting up users, checking the books, `moments audit`) stay direct.
"""

from __future__ import annotations

import atexit
import os

from entitlements.dev.pgbouncer import INSTALL_HINT, PgBouncer, PgBouncerOptions

ENV = "MOMENTS_TEST_PGBOUNCER"
# Smaller than one API process's pool (DB_POOL_SIZE_MAX=10 in start_api): transactions of one client
# connection are served by different server connections, which is what transaction pooling must survive.
SERVER_POOL_SIZE = 4
_bouncers: dict[tuple[str, int], PgBouncer] = {}


def through_pgbouncer() -> bool:
    return os.environ.get(ENV, "").strip() not in {"", "0", "false"}


def skip_reason() -> str:
    return f"PgBouncer tests need Debian's pgbouncer: {INSTALL_HINT}"


def shared_pgbouncer(database_url: str) -> PgBouncer:
    """The run's PgBouncer in front of `database_url`'s server (started now if it is the first)."""
    candidate = PgBouncer.in_front_of(database_url, PgBouncerOptions(default_pool_size=SERVER_POOL_SIZE))
    address = (candidate.server_host, candidate.server_port)
    if address not in _bouncers:
        if not _bouncers:
            atexit.register(stop_all)
        _bouncers[address] = candidate.start()
    return _bouncers[address]


def stop_all() -> None:
    while _bouncers:
        _, bouncer = _bouncers.popitem()
        bouncer.stop()


def api_database_settings(database_url: str) -> dict[str, str]:
    """An API process's database settings: `database_url` itself, or (MOMENTS_TEST_PGBOUNCER) through
    PgBouncer in transaction mode with the direct URL beside it."""
    if not through_pgbouncer():
        return {"DATABASE_URL": database_url}
    bouncer = shared_pgbouncer(database_url)
    return {
        "DATABASE_URL": bouncer.url_for(database_url),
        "DATABASE_DIRECT_URL": database_url,
        "DATABASE_POOL_MODE": "transaction",
    }
