"""The HTTP figures through PgBouncer: a Moments server whose pools go through a real PgBouncer in transaction
mode (DATABASE_POOL_MODE=transaction, DATABASE_DIRECT_URL for the key cache's LISTEN), beside the direct
one in the same round, so the ratio says what transaction pooling costs a request. Its CPU figure counts
PgBouncer's process with the server's. Without Debian's `pgbouncer` these figures are left out, and the
run says so once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench.ledger import cpu
from entitlements.dev import pgbouncer

# Server connections PgBouncer opens: fewer than the server's pools hold (DB_POOL_SIZE_MAX per worker), as
# in a deployment where PgBouncer is there to bound what PostgreSQL runs.
SERVER_POOL_SIZE = 8
# Each figure that has a PgBouncer variant: (the direct figure, the variant's name).
VARIANTS = {"entitlements": "entitlements_pgbouncer", "generations": "generations_pgbouncer"}


def available() -> bool:
    return pgbouncer.installed()


def skip_line() -> str:
    return f"PgBouncer figures skipped: {pgbouncer.INSTALL_HINT}"


def env_for(env: dict[str, str], bouncer: pgbouncer.PgBouncer, dsn: str) -> dict[str, str]:
    return env | {
        "DATABASE_URL": bouncer.url_for(dsn),
        "DATABASE_DIRECT_URL": dsn,
        "DATABASE_POOL_MODE": "transaction",
    }


@contextmanager
def bouncer_for(tcp_dsn: str) -> Iterator[pgbouncer.PgBouncer]:
    options = pgbouncer.PgBouncerOptions(default_pool_size=SERVER_POOL_SIZE)
    with pgbouncer.pgbouncer_in_front_of(tcp_dsn, options) as started:
        yield started


def cpu_s_with(server_cpu_s: float, bouncer: pgbouncer.PgBouncer) -> float:
    return server_cpu_s + cpu.postgres_cpu_s(bouncer.pid)


def figure_names(names: list[str]) -> list[str]:
    """`names` with each variant right after its direct figure."""
    ordered = []
    for name in names:
        ordered.append(name)
        if name in VARIANTS:
            ordered.append(VARIANTS[name])
    return ordered


def labelled(_label: str) -> str:
    # Printed right under its direct figure.
    return "  the same, through PgBouncer"


def ratio_lines(ratio: Callable[[str, str], float | None]) -> list[str]:
    """Each variant's rate over its direct figure's (no goal: the issue asks for the figures, and the
    price of transaction pooling without prepared statements is what they show)."""
    lines = []
    for direct, variant in VARIANTS.items():
        value = ratio(variant, direct)
        if value is not None:
            lines.append(f"    {variant + ' / ' + direct:<40}{value:>8.2f}   (through PgBouncer, transaction mode)")
    return lines
