"""Which database a read uses: the one place that decides between the primary and the replica.

Handlers say what a read needs by the dependency they take: `pool` is the primary, always; `read_pool`
is `Reads.replica()`, the replica (DATABASE_REPLICA_URL) while it is provably at most
DATABASE_REPLICA_LAG_MAX_S behind the primary, else the primary. `REPLICA_READS` and `PRIMARY_READS`
below are the routing table, one documented choice per read endpoint (tests/unit check that the handlers
take what the table says; docs/operations.md#read-replicas prints it).

The bound is measured, not estimated from replay timestamps (`now() - pg_last_xact_replay_timestamp()`
grows while the primary is idle, and says nothing about a replica that stopped receiving): every check
interval the monitor samples the primary's WAL insert position with the (monotonic) time it asked, then
asks the replica how far it has replayed. Once the replica has replayed past a sample taken at t,
everything the primary had committed by t is visible on it (a commit record is inserted before the
commit becomes visible, even with synchronous_commit off), so a read at time T is at most T - t stale.
`replica()` compares that age with the bound on every call, so a replica that stops answering, or a
monitor that stalls, falls back by itself within the bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import asyncpg
import structlog
from prometheus_client import Gauge

from entitlements.database import BoundedPool, is_unavailable

ReplicaState = Literal["none", "ok", "lagging", "down"]

# Endpoints (operation ids) that read `read_pool`, and why a bounded-stale answer is right for them.
REPLICA_READS: dict[str, str] = {
    "getEntitlements": "the tier and balance another application checks before offering a video; the gate "
    "inside createGeneration reads the primary, so staleness never lets a generation through",
    "listGenerations": "a listing; a generation just created is read by id (getGeneration, primary)",
    "listLedgerTransactions": "a finance listing by id and time window",
    "getUserBalanceAt": "a balance as of an instant; as of a commit position it reads the primary",
    "getAccountBalance": "as getUserBalanceAt",
    "priceWhatIf": "a read-only replay of delivered generations under a draft table",
    "listPeriods": "closed periods; the close itself (closePeriod) answers with the period it wrote",
    "reconcileStripe": "a report over a past window",
    "listStripeEvents": "a listing",
    "listEvents": "one user's events by sequence; every user's in commit order reads the primary",
}
# Read endpoints that stay on the primary, and why.
PRIMARY_READS: dict[str, str] = {
    "getGeneration": "a generation's status right after the caller created it (read your own write)",
    "getGenerationVideo": "follows getGeneration",
    "getUserLedger": "support reads a user's ledger right after a grant or refund it made",
    "getLedgerFeed": "commit order below the primary's own commit horizon; positions are the primary's",
    "getRollforward": "`final` is the primary's commit horizon (pg_stat_activity); the sums must share it",
    "listExports": "the caller's own exports, polled right after creating them",
    "getExport": "as listExports",
    "getExportFile": "as listExports",
    "auditLedger": "the ledger's invariants, checked on the database of record",
    "getStripeEvent": "an operator follows an event they re-applied",
    "getSeal": "the sealer writes on the primary",
    "verifySeal": "as getSeal",
    "getTransactionProof": "as getSeal",
    "listCheckpoints": "as getSeal",
    "listApprovals": "the second person acts on what the first just requested",
    "listKeys": "key management, right after creating or revoking",
    "listWebhookEndpoints": "endpoint management, right after registering",
    "getWebhookEndpoint": "as listWebhookEndpoints",
    "listWebhookDeliveries": "as listWebhookEndpoints",
    "readyz": "readiness is the primary's; the replica's state is reported beside it",
    "metrics": "the business gauges are the primary's",
}

REPLICA_LAG_SECONDS = Gauge(
    "moments_replica_lag_seconds",
    "How far behind the primary reads routed to the replica may be (the measured bound; +Inf when unknown)",
)
REPLICA_SERVING = Gauge("moments_replica_serving", "1 while routed reads go to the replica, 0 while to the primary")
# Samples of the primary's WAL position kept: enough for a replica this many bounds behind to be measured.
SAMPLES_PER_BOUND = 4
SAMPLES_MIN = 16
# A statement the replica's server timed out is slow, not unserved: running it again on the primary would
# double the wait, so it is answered 503 like any statement timeout.
NOT_RETRIED_SQLSTATES = frozenset({"57014"})
# SQLSTATEs that say the replica itself is out: connection exceptions (08), and admin shutdown, crash
# shutdown, cannot connect now (57P01-57P03). Other retried errors (a recovery conflict, 40001; the pool's
# own acquire timeout when it is busy) say nothing about the replica's health.
REPLICA_OUT_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
# PostgreSQL's WAL page (wal_block_size, 8 kB unless built otherwise) and the largest page header (the
# first page of a segment): an insert position just past a page's header is where the next record will
# go, while a replica that replayed the record ending at that page's start reports the page's start.
WAL_PAGE_BYTES = 8192
WAL_PAGE_HEADER_BYTES_MAX = 40
log = structlog.get_logger("moments.reads")


def replayed_past(replayed: int, inserted: int) -> bool:
    """Whether a replica that has replayed up to `replayed` has every record inserted before `inserted`."""
    if replayed >= inserted:
        return True
    into_page = inserted % WAL_PAGE_BYTES
    return into_page <= WAL_PAGE_HEADER_BYTES_MAX and replayed >= inserted - into_page


def _sqlstate(error: BaseException) -> str:
    return str(getattr(error, "sqlstate", "") or "")


def _retried_on_primary(error: BaseException) -> bool:
    return is_unavailable(error) and _sqlstate(error) not in NOT_RETRIED_SQLSTATES


def _replica_out(error: BaseException) -> bool:
    """Whether `error` says the replica itself is out (refused, reset, closed, shutting down); a timeout
    may be a busy pool, and the monitor's own probe judges those."""
    if isinstance(error, TimeoutError):
        return False
    if isinstance(error, OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
        return True
    state = _sqlstate(error)
    return state.startswith("08") or state in REPLICA_OUT_SQLSTATES


class ReplicaPool(BoundedPool):
    """The replica's pool: a single-statement read that the replica does not serve is served by the primary,
    and a replica that failed is reported to its `Reads` at once (reads go to the primary until the monitor
    sees it answer and caught up again)."""

    __slots__ = ("reads",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: Reads | None = None

    def _fallback(self, error: BaseException) -> asyncpg.Pool:
        if self.reads is None or not _retried_on_primary(error):
            raise error
        if _replica_out(error):
            self.reads.replica_failed(error)
        log.info("replica_read_fell_back", error=repr(error)[:200])
        return self.reads.primary

    # Same arguments as asyncpg's (timeout, record_class, column), passed through; the stubs' overloads
    # differ only in record_class.
    async def fetch(self, query: str, *args: object, **kwargs: Any) -> Any:
        try:
            return await super().fetch(query, *args, **kwargs)
        except Exception as error:
            return await self._fallback(error).fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: object, **kwargs: Any) -> Any:
        try:
            return await super().fetchrow(query, *args, **kwargs)
        except Exception as error:
            return await self._fallback(error).fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: object, **kwargs: Any) -> Any:
        try:
            return await super().fetchval(query, *args, **kwargs)
        except Exception as error:
            return await self._fallback(error).fetchval(query, *args, **kwargs)


class Reads:
    """The primary, the replica if one is configured, and the monitor that says whether reads may use it."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None = None,
        *,
        replica_url: str | None = None,
        lag_max_s: float,
        check_interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self._replica = replica
        self.lag_max_s = lag_max_s
        self.check_interval_s = check_interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._replica_url = replica_url
        # The monitor's own connection: a replica pool that is merely busy must not read as a replica down.
        self._probe: asyncpg.Connection | None = None
        # The monotonic time before which everything the primary flushed is visible on the replica.
        self._fresh_as_of = -math.inf
        self._down: str | None = "not checked yet"
        self._samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=max(SAMPLES_MIN, SAMPLES_PER_BOUND * math.ceil(lag_max_s / check_interval_s))
        )
        if isinstance(replica, ReplicaPool):
            replica.reads = self

    @property
    def configured(self) -> bool:
        return self._replica is not None

    def replica(self) -> asyncpg.Pool:
        """The pool for a read that may be up to `lag_max_s` stale: the replica while it provably is not
        further behind than that, else the primary. Called per request: no I/O."""
        if self._replica is not None and self._down is None and self._clock() - self._fresh_as_of <= self.lag_max_s:
            return self._replica
        return self.primary

    def lag_s(self) -> float | None:
        """How far behind the primary the replica may be now (an upper bound); None without a replica."""
        if self._replica is None:
            return None
        return max(self._clock() - self._fresh_as_of, 0.0)

    @property
    def state(self) -> ReplicaState:
        if self._replica is None:
            return "none"
        if self._down is not None:
            return "down"
        return "ok" if self.replica() is self._replica else "lagging"

    @property
    def down_because(self) -> str | None:
        return self._down

    def replica_failed(self, error: BaseException) -> None:
        if self._down is None:
            log.warning("replica_down", error=repr(error)[:200])
        self._down = f"{type(error).__name__}"

    async def check(self) -> None:
        """One measurement: the primary's WAL insert position now, then the replica's replayed position."""
        if self._replica is None:
            return
        asked_at = self._clock()
        try:
            inserted = await self.primary.fetchval("SELECT pg_current_wal_insert_lsn()", timeout=self.timeout_s)
        except Exception as error:
            if not is_unavailable(error):
                raise
            log.warning("replica_check_primary_failed", error=repr(error)[:200])
        else:
            self.primary_was_at(asked_at, int(inserted))
        try:
            row = await self._probe_replica()
        except Exception as error:
            self._drop_probe()
            if not is_unavailable(error):
                raise
            self.replica_failed(error)
            return
        assert row is not None
        if not row["standby"] or row["replayed"] is None:
            # Promoted (or never a standby): it no longer follows this primary.
            self._down = "not a standby"
            return
        self.replica_is_at(int(row["replayed"]))

    async def _probe_replica(self) -> asyncpg.Record | None:
        query = "SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn() AS replayed"
        assert self._replica_url is not None, "a replica is measured through a connection of its own"
        if self._probe is None or self._probe.is_closed():
            self._probe = await asyncpg.connect(
                self._replica_url,
                timeout=self.timeout_s,
                command_timeout=self.timeout_s,
                server_settings={"application_name": "moments-replica-monitor"},
                # Nothing prepared by name: the URL may be a transaction-mode PgBouncer in front of the replica.
                statement_cache_size=0,
            )
        return await self._probe.fetchrow(query, timeout=self.timeout_s)

    def _drop_probe(self) -> None:
        # Terminated, not closed: a replica that stopped answering would hold a polite close too.
        if self._probe is not None:
            self._probe.terminate()
            self._probe = None

    def primary_was_at(self, asked_at: float, inserted: int) -> None:
        """A sample: the primary's WAL insert position, asked at monotonic time `asked_at`."""
        self._samples.append((asked_at, inserted))

    def replica_is_at(self, replayed: int) -> None:
        """The replica answered, having replayed up to `replayed`: the newest sample it has replayed past
        becomes the freshness (older samples are dropped)."""
        if self._down is not None:
            log.info("replica_up", was=self._down)
        self._down = None
        for index in range(len(self._samples) - 1, -1, -1):
            taken_at, position = self._samples[index]
            if replayed_past(replayed, position):
                self._fresh_as_of = max(self._fresh_as_of, taken_at)
                for _ in range(index):
                    self._samples.popleft()
                return

    async def run(self) -> None:
        """Measures every `check_interval_s` until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:  # a bug in a check must not stop the measuring (reads then age onto the primary)
                log.exception("replica_check_failed")
            await asyncio.sleep(self.check_interval_s)

    def refresh_metrics(self) -> None:
        lag = self.lag_s()
        REPLICA_LAG_SECONDS.set(math.inf if lag is None and self._replica is not None else (lag or 0.0))
        REPLICA_SERVING.set(1.0 if self.state == "ok" else 0.0)

    async def close(self) -> None:
        self._drop_probe()
        if self._replica is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._replica.close(), self.timeout_s)
            self._replica.terminate()
