"""Which pool a read uses (entitlements/reads.py): the routing table against the handlers, and the lag
bound's arithmetic on a clock the test moves. The pools here are never used: the decisions do no I/O."""

from __future__ import annotations

from typing import cast

import asyncpg
import pytest

from entitlements.app import create_app
from entitlements.reads import PRIMARY_READS, REPLICA_READS, Reads, replayed_past
from tests.support.app import settings_for

PRIMARY = cast(asyncpg.Pool, object())
REPLICA = cast(asyncpg.Pool, object())
LAG_MAX_S = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def handlers() -> dict[str, tuple[set[str], set[str]]]:
    """Each API operation's HTTP methods and which of `pool`, `read_pool` and `ledger_service` (whose pool is
    the primary's) its handler takes."""
    app = create_app(settings_for("postgresql://nobody@127.0.0.1:1/none"))
    found: dict[str, tuple[set[str], set[str]]] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if isinstance(handler.operation_id, str):
                taken = set(handler.parsed_fn_signature.parameters) & {"pool", "read_pool", "ledger_service"}
                found[handler.operation_id] = (set(handler.http_methods), taken)
    return found


def test_the_routing_table_is_what_the_handlers_take() -> None:
    found = handlers()
    replica_readers = {operation for operation, (_, taken) in found.items() if "read_pool" in taken}
    primary_readers = {
        operation
        for operation, (methods, taken) in found.items()
        if taken and "read_pool" not in taken and methods == {"GET"}
    }
    assert replica_readers == set(REPLICA_READS)
    assert primary_readers == set(PRIMARY_READS)
    assert not set(REPLICA_READS) & set(PRIMARY_READS)


def reads(clock: Clock) -> Reads:
    return Reads(PRIMARY, REPLICA, lag_max_s=LAG_MAX_S, check_interval_s=0.5, timeout_s=1.0, clock=clock)


def test_without_a_replica_every_read_goes_to_the_primary() -> None:
    routing = Reads(PRIMARY, None, lag_max_s=LAG_MAX_S, check_interval_s=0.5, timeout_s=1.0)
    assert routing.replica() is PRIMARY
    assert routing.state == "none"
    assert routing.lag_s() is None


def test_reads_use_the_replica_only_while_it_has_replayed_a_recent_enough_sample() -> None:
    clock = Clock()
    routing = reads(clock)
    assert routing.replica() is PRIMARY  # never measured
    routing.primary_was_at(clock.now, 5000)
    routing.replica_is_at(5000)
    assert routing.replica() is REPLICA
    assert routing.state == "ok"

    # The primary moves on; the replica stays behind: the bound is the age of the last sample it passed.
    clock.now += 1.0
    routing.primary_was_at(clock.now, 9000)
    routing.replica_is_at(8999)
    clock.now += LAG_MAX_S - 1.0
    assert routing.lag_s() == pytest.approx(LAG_MAX_S)
    assert routing.replica() is REPLICA
    clock.now += 0.01
    assert routing.replica() is PRIMARY
    assert routing.state == "lagging"

    # Caught up with the newer sample: fresh as of when that sample was asked.
    routing.replica_is_at(9000)
    assert routing.lag_s() == pytest.approx(LAG_MAX_S - 1.0 + 0.01)
    assert routing.replica() is REPLICA


def test_an_idle_primary_keeps_the_replica_fresh() -> None:
    clock = Clock()
    routing = reads(clock)
    for _ in range(100):  # long past the bound, nothing written: every sample is the same position
        routing.primary_was_at(clock.now, 7000)
        routing.replica_is_at(7000)
        clock.now += 0.5
    assert routing.lag_s() == pytest.approx(0.5)
    assert routing.replica() is REPLICA


def test_a_replica_that_failed_is_not_read_until_it_answers_again() -> None:
    clock = Clock()
    routing = reads(clock)
    routing.primary_was_at(clock.now, 100)
    routing.replica_is_at(100)
    routing.replica_failed(ConnectionRefusedError())
    assert routing.replica() is PRIMARY
    assert routing.state == "down"
    routing.replica_is_at(100)
    assert routing.replica() is REPLICA


def test_a_monitor_that_stops_measuring_ages_reads_onto_the_primary() -> None:
    clock = Clock()
    routing = reads(clock)
    routing.primary_was_at(clock.now, 100)
    routing.replica_is_at(100)
    clock.now += LAG_MAX_S + 0.1
    assert routing.replica() is PRIMARY


@pytest.mark.parametrize(
    ("replayed", "inserted", "past"),
    [
        (100, 100, True),
        (101, 100, True),
        (99, 100, False),
        # Inserting at a page's first record (just past its header); the replica reports the page's start.
        (8192, 8192 + 24, True),
        (16 << 20, (16 << 20) + 40, True),
        (8191, 8192 + 24, False),
        (8192, 8192 + 48, False),
    ],
)
def test_replayed_past_allows_only_a_page_header_between_them(replayed: int, inserted: int, past: bool) -> None:
    assert replayed_past(replayed, inserted) is past
