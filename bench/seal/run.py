"""The seal benchmark, in one run against one embedded PostgreSQL server:

(a)       the ledger's peak write rate: benchmark (a) of bench/ledger (hold → capture lifecycles, 256
          callers over 10,000 users), alone; a lifecycle is two ledger transactions;
(seal)    the sealer alone, catching up on everything (a) wrote: transactions chained per second, with
          checkpoints signed every SEAL_CHECKPOINT_TRANSACTIONS;
(a+seal)  (a) again with the sealer running in the same process, as in `moments serve`: the lag, sampled
          four times a second (transactions not sealed, and the age of the oldest), and how long the
          sealer takes to drain what is left when the writes stop;
(verify)  `moments verify` over the whole ledger, timed, and extrapolated to a million transactions.

Goals: (seal)/(peak writes) >= 1.0 (the sealer keeps up with the ledger's peak write rate, the better of
(a) and (a+seal)) and, during (a+seal), the lag never above two seconds' worth of writes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg

import migrations
from bench.ledger import cpu, workload
from bench.ledger.run import add_workload_options, create_databases, machine, postmaster_pid, progress
from entitlements import seal
from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions
from entitlements.seal.service import refresh_metrics
from entitlements.settings import SealSettings
from ledger import BatchSettings, Ledger

DATABASE = "seal_bench"
USER_FUNDS = 1_000_000
GOAL_RATE = 1.0
GOAL_LAG_WRITE_SECONDS = 2.0
LAG_SAMPLE_S = 0.25
DRAIN_WAIT_S_MAX = 120.0
LAG_COUNT_MAX = 10_000_000


@dataclass
class LagSample:
    at_s: float
    transactions: int
    seconds: float


@dataclass
class Report:
    options: dict[str, object]
    machine: dict[str, object]
    settings: dict[str, object] = field(default_factory=dict)
    writes_per_s: float = 0.0
    writes_cpu: str = ""
    seal_alone_per_s: float = 0.0
    seal_alone_transactions: int = 0
    seal_alone_checkpoints: int = 0
    seal_alone_cpu: str = ""
    writes_with_seal_per_s: float = 0.0
    writes_with_seal_cpu: str = ""
    lag: list[LagSample] = field(default_factory=list)
    drain_s: float = 0.0
    verify_transactions: int = 0
    verify_checkpoints: int = 0
    verify_s: float = 0.0
    verify_ok: bool = False
    total_s: float = 0.0

    @property
    def peak_writes_per_s(self) -> float:
        """The ledger's peak write rate in this run: the better of its two windows (other programs on a
        shared machine can depress either)."""
        return max(self.writes_per_s, self.writes_with_seal_per_s)

    @property
    def rate_ratio(self) -> float:
        return self.seal_alone_per_s / self.peak_writes_per_s if self.peak_writes_per_s else 0.0

    @property
    def lag_max_transactions(self) -> int:
        return max((sample.transactions for sample in self.lag), default=0)

    @property
    def lag_max_seconds(self) -> float:
        return max((sample.seconds for sample in self.lag), default=0.0)

    @property
    def lag_in_write_seconds(self) -> float:
        """The largest lag, as seconds of writes at the rate of (a+seal)."""
        return self.lag_max_transactions / self.writes_with_seal_per_s if self.writes_with_seal_per_s else 0.0

    @property
    def verify_s_per_million(self) -> float:
        return self.verify_s * 1_000_000 / self.verify_transactions if self.verify_transactions else 0.0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seal", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_workload_options(parser)
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    options, _ = parser.parse_known_args(argv)
    return options


async def _sealed_position(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT sealed_position FROM ledger_seal_state"))


async def _ledger_size(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger_transactions"))


async def _writes(
    led: Ledger, options: argparse.Namespace, users: list[str], run_id: str, pid: int | None
) -> tuple[float, str]:
    """One window of benchmark (a): ledger transactions per second, and who used the CPUs meanwhile."""
    result = await workload.lifecycles(
        led,
        workload.BatchProbe(),
        name="a",
        users=users,
        callers=options.callers,
        warmup_s=options.warmup_s,
        duration_s=options.duration_s,
        run_id=run_id,
        postmaster_pid=pid,
    )
    return 2 * result.per_s, result.cpu.describe()


async def _catch_up(sealer: seal.Sealer) -> int:
    """Rounds until nothing is left; transactions chained."""
    sealed = 0
    while True:
        done = await sealer.seal_once()
        sealed += done.sealed
        if not done.more:
            return sealed


async def measure(dsn: str, options: argparse.Namespace, report: Report, work_dir: Path, pid: int | None) -> None:
    await migrations.apply(dsn)
    key = seal.create_key_file(work_dir / "seal-key.pem")
    settings = dataclasses.replace(SealSettings.from_env(), key_file=work_dir / "seal-key.pem", key_pem=None)
    report.settings = {
        "checkpoint_transactions": settings.checkpoint_transactions,
        "checkpoint_interval_s": settings.checkpoint_interval_s,
        "poll_interval_s": settings.poll_interval_s,
    }
    batch = BatchSettings()
    pool = await asyncpg.create_pool(dsn, min_size=batch.committers + 2, max_size=batch.committers + 4)
    assert pool is not None
    users = workload.user_ids(options.users, "bench-user-")
    run_id = uuid.uuid4().hex[:8]
    sealer = seal.Sealer(pool, settings, key)
    try:
        async with Ledger(pool, batch_settings=batch) as led:
            progress(f"funding {len(users):,} users")
            await workload.fund(led, users, USER_FUNDS, run_id)
            await pool.execute("VACUUM (ANALYZE)")
            progress(f"(a) alone: {options.callers} callers, {options.warmup_s:g} s warm-up + {options.duration_s} s")
            report.writes_per_s, report.writes_cpu = await _writes(led, options, users, f"{run_id}-1", pid)

        backlog = await _ledger_size(pool)
        progress(f"(seal) the sealer alone on a backlog of {backlog:,} transactions")
        await pool.execute("CHECKPOINT")
        start, started = cpu.sample(pid), time.perf_counter()
        report.seal_alone_transactions = await _catch_up(sealer)
        elapsed = time.perf_counter() - started
        report.seal_alone_cpu = cpu.usage(start, cpu.sample(pid)).describe()
        report.seal_alone_per_s = report.seal_alone_transactions / elapsed
        report.seal_alone_checkpoints = int(await pool.fetchval("SELECT count(*) FROM ledger_seal_checkpoints"))

        progress("(a+seal) (a) again with the sealer running beside it")
        async with Ledger(pool, batch_settings=batch) as led:
            sealing = asyncio.create_task(sealer.run())
            sampling = asyncio.create_task(_sample_lag(pool, report))
            try:
                written = await _writes(led, options, users, f"{run_id}-2", pid)
                report.writes_with_seal_per_s, report.writes_with_seal_cpu = written
                stopped = time.perf_counter()
                total = await _ledger_size(pool)
                while await _sealed_position(pool) < total and time.perf_counter() - stopped < DRAIN_WAIT_S_MAX:  # noqa: ASYNC110 - the sealer is in the database, not an event here
                    await asyncio.sleep(0.05)
                report.drain_s = time.perf_counter() - stopped
            finally:
                for task in (sealing, sampling):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        await _catch_up(sealer)

        progress("(verify) moments verify over the whole ledger")
        async with pool.acquire() as connection:
            started = time.perf_counter()
            result = await seal.verify(connection, {key.key_id: key.public_key})
            report.verify_s = time.perf_counter() - started
        report.verify_ok = result.ok
        report.verify_transactions = result.transactions
        report.verify_checkpoints = result.checkpoints
    finally:
        await pool.close()


async def _sample_lag(pool: asyncpg.Pool, report: Report) -> None:
    """The lag as /metrics reports it, four times a second."""
    from entitlements.seal.service import LAG_SECONDS, LAG_TRANSACTIONS

    began = time.perf_counter()
    while True:
        await refresh_metrics(pool, LAG_COUNT_MAX)
        report.lag.append(
            LagSample(
                at_s=time.perf_counter() - began,
                transactions=int(LAG_TRANSACTIONS._value.get()),
                seconds=float(LAG_SECONDS._value.get()),
            )
        )
        await asyncio.sleep(LAG_SAMPLE_S)


def run(options: argparse.Namespace) -> Report:
    report = Report(
        options={k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}, machine=machine()
    )
    began = time.perf_counter()
    work_dir = Path(tempfile.mkdtemp(prefix="moments-seal-bench-"))
    server = EmbeddedPostgres(work_dir / "pg", ServerOptions(durable=not options.fast, max_connections=100))
    try:
        progress(f"starting embedded PostgreSQL in {work_dir} ({'fsync OFF' if options.fast else 'durable, fsync on'})")
        dsn = server.start()
        report.machine["postgres"] = asyncio.run(create_databases(dsn, [DATABASE]))
        asyncio.run(measure(server.socket_dsn_for(DATABASE), options, report, work_dir, postmaster_pid(server)))
    finally:
        server.destroy()
        shutil.rmtree(work_dir, ignore_errors=True)
    report.total_s = time.perf_counter() - began
    return report


def _verdict(passed: bool, goal: str) -> str:
    return f"{'PASS' if passed else 'FAIL'} (goal {goal})"


def goals_met(report: Report) -> tuple[bool, bool]:
    return report.rate_ratio >= GOAL_RATE, report.lag_in_write_seconds <= GOAL_LAG_WRITE_SECONDS


def render(report: Report) -> str:
    options, settings = report.options, report.settings
    rate_ok, lag_ok = goals_met(report)
    lag = report.lag
    tail = lag[len(lag) // 2 :]
    sampled_every = max(1, len(lag) // 12)
    lines = [
        "",
        "Moments seal benchmark",
        f"  machine   : {report.machine['nproc']} CPUs ({report.machine['cpu']}), Python {report.machine['python']}, "
        f"PostgreSQL {report.machine.get('postgres', '?')} (embedded, Unix socket)",
        f"  durability: {'fsync OFF (--fast): not the honest figure' if options['fast'] else 'durable (fsync on)'}",
        f"  workload  : benchmark (a), {options['callers']} callers over {options['users']:,} users, "
        f"{options['warmup_s']:g} s warm-up + {options['duration_s']} s per window; whole run {report.total_s:.0f} s",
        f"  sealer    : checkpoints every {settings.get('checkpoint_transactions')} transactions or "
        f"{settings.get('checkpoint_interval_s')} s, polling every {settings.get('poll_interval_s')} s when idle",
        "",
        f"  (a)        ledger writes, alone            {report.writes_per_s:>10,.0f} tx/s",
        f"             CPU: {report.writes_cpu}",
        f"  (seal)     sealer alone (catching up)      {report.seal_alone_per_s:>10,.0f} tx/s  "
        f"({report.seal_alone_transactions:,} transactions, {report.seal_alone_checkpoints:,} checkpoints)",
        f"             CPU: {report.seal_alone_cpu}",
        f"  (a+seal)   ledger writes, sealer beside it {report.writes_with_seal_per_s:>10,.0f} tx/s",
        f"             CPU: {report.writes_with_seal_cpu}",
        f"             lag: max {report.lag_max_transactions:,} transactions ({report.lag_in_write_seconds:.2f} s of "
        f"writes), oldest unsealed at most {report.lag_max_seconds:.2f} s old; second half of the window: max "
        f"{max((s.transactions for s in tail), default=0):,} transactions; drained {report.drain_s:.2f} s after "
        "the writes stopped",
        f"             lag samples (transactions): {', '.join(f'{s.transactions:,}' for s in lag[::sampled_every])}",
        f"  (verify)   moments verify: {report.verify_transactions:,} transactions and {report.verify_checkpoints:,} "
        f"checkpoints in {report.verify_s:.2f} s ({'ok' if report.verify_ok else 'FAILED'}) = "
        f"{report.verify_s_per_million:.0f} s per million transactions (extrapolated linearly from this size)",
        "",
        f"  (seal)/peak writes = {report.rate_ratio:.2f}  {_verdict(rate_ok, f'>= {GOAL_RATE:.1f}')} (the peak is the "
        f"better of (a) and (a+seal): {report.peak_writes_per_s:,.0f} tx/s)",
        f"  lag max            = {report.lag_in_write_seconds:.2f} s of writes  "
        f"{_verdict(lag_ok, f'<= {GOAL_LAG_WRITE_SECONDS:.0f} s')}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    options = parse(argv)
    if options.duration_s < 1 or options.callers < 1 or options.users < 1:
        print("--duration-s, --callers and --users must be at least 1", file=sys.stderr)
        return 2
    report = run(options)
    print(render(report), flush=True)
    if options.json:
        data = asdict(report) | {"rate_ratio": report.rate_ratio, "lag_in_write_seconds": report.lag_in_write_seconds}
        options.json.write_text(json.dumps(data, indent=2, default=str))
    rate_ok, lag_ok = goals_met(report)
    return 1 if not report.verify_ok or (options.strict and not (rate_ok and lag_ok)) else 0
