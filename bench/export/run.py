"""The export benchmark, in one run against one embedded PostgreSQL server:

(export) `moments export`'s code (entitlements.finance.export_to_file) writing every posting as CSV, in
         commit order from one snapshot, with its SHA-256, to a file: rows per second and the peak RSS of
         the process that ran it (a process of its own per size, so each peak is its own);
(copy)   PostgreSQL's own `COPY (SELECT …) TO STDOUT` of the same rows in the same order, written to a
         file the same way, measured in the same process, taking turns with the export.

At two ledger sizes (`--small-postings`, then grown to `--postings`), so that the peak RSS shows whether
memory grows with the ledger. Goal: export rows/s >= 0.5 of COPY's, and the same peak RSS at both sizes.
The ledger is built in bulk with plain SQL (purchases, two postings each), the database's own checks
satisfied; fsync is off, since only reading is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

import migrations
from bench.ledger.run import create_databases, machine, progress
from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions

DATABASE = "export_bench"
GOAL_RATIO = 0.5
# Transactions written per database transaction while building the ledger.
BUILD_BATCH = 50_000
USERS = 10_000

_ADD_USERS = """
    INSERT INTO ledger_accounts (code, kind, user_id)
    SELECT 'user:u' || g || ':available', 'user_available', 'u' || g FROM generate_series(0, $1 - 1) g
"""
# Each transaction with its row in ledger_idempotency_keys, in the same statement (the database checks both).
_ADD_TRANSACTIONS = """
    WITH written AS (
        INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, user_id, actor, reason, result)
        SELECT 'purchase', 'bench-' || g, sha256(g::text::bytea), 'u' || (g % $3), 'bench', 'bulk, for the benchmark',
               '{}'
        FROM generate_series($1::bigint, $2::bigint) g
        RETURNING id, idempotency_key, created_at
    )
    INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at)
    SELECT idempotency_key, id, created_at FROM written
"""
_ADD_POSTINGS = """
    INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
    SELECT t.id, x.account_id, x.amount, t.created_at
    FROM ledger_transactions t
    JOIN ledger_accounts a ON a.code = 'user:' || t.user_id || ':available'
    CROSS JOIN LATERAL (VALUES ((SELECT id FROM ledger_accounts WHERE code = 'system:sales'), -(t.id % 100 + 1)),
                               (a.id, t.id % 100 + 1)) AS x (account_id, amount)
    WHERE t.written_by_xid = pg_current_xact_id()
"""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postings", type=int, default=1_000_000, help="the larger ledger (default 1000000)")
    parser.add_argument("--small-postings", type=int, default=250_000, help="the smaller one (default 250000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    options, _ = parser.parse_known_args(argv)
    return options


async def grow(dsn: str, transactions_from: int, transactions_to: int) -> None:
    """Adds purchases [from, to) (two postings each), in batches, each its own database transaction."""
    connection = await asyncpg.connect(dsn)
    try:
        if transactions_from == 0:
            await connection.execute(_ADD_USERS, USERS)
        for start in range(transactions_from, transactions_to, BUILD_BATCH):
            end = min(start + BUILD_BATCH, transactions_to) - 1
            async with connection.transaction():
                await connection.execute(_ADD_TRANSACTIONS, start, end, USERS)
                await connection.execute(_ADD_POSTINGS)
        await connection.execute("VACUUM ANALYZE ledger_transactions")
        await connection.execute("VACUUM ANALYZE ledger_postings")
        await connection.execute("VACUUM ANALYZE ledger_idempotency_keys")
    finally:
        await connection.close()


def measure(dsn: str, work_dir: Path) -> dict[str, float]:
    ran = subprocess.run(
        [sys.executable, "-m", "bench.export.child", dsn, str(work_dir)], capture_output=True, text=True, check=False
    )
    if ran.returncode != 0:
        raise RuntimeError(f"the measured export failed:\n{ran.stderr}")
    figures: dict[str, float] = json.loads(ran.stdout.strip().splitlines()[-1])
    return figures


def render(sizes: list[dict[str, float]]) -> str:
    lines = ["", "Export of every posting as CSV (commit order, one snapshot, SHA-256), to a file:"]
    lines.append(f"  {'postings':>10}  {'export rows/s':>14}  {'COPY rows/s':>12}  {'ratio':>6}  {'peak RSS MiB':>12}")
    for size in sizes:
        export_rate, copy_rate = size["rows"] / size["export_s"], size["rows"] / size["copy_s"]
        lines.append(
            f"  {int(size['rows']):>10,}  {export_rate:>14,.0f}  {copy_rate:>12,.0f}  {export_rate / copy_rate:>6.2f}"
            f"  {size['peak_rss_mib']:>12.1f}"
        )
    worst = min(size["copy_s"] / size["export_s"] for size in sizes)
    verdict = "PASS" if worst >= GOAL_RATIO else "FAIL"
    lines.append(f"  ratio export/COPY: worst {worst:.2f} — {verdict} (goal >= {GOAL_RATIO})")
    growth = sizes[-1]["peak_rss_mib"] - sizes[0]["peak_rss_mib"]
    lines.append(
        f"  peak RSS grew {growth:+.1f} MiB from {int(sizes[0]['rows']):,} to {int(sizes[-1]['rows']):,} postings"
        f" (the process before exporting: {sizes[0]['rss_before_mib']:.1f} MiB)"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    options = parse(argv)
    if not 2 <= options.small_postings < options.postings:
        print("--small-postings must be at least 2 and below --postings", file=sys.stderr)
        return 2
    work_dir = Path(tempfile.mkdtemp(prefix="moments-export-bench-"))
    server = EmbeddedPostgres(work_dir / "pg", ServerOptions(durable=False, max_connections=20))
    sizes: list[dict[str, float]] = []
    began = time.perf_counter()
    try:
        progress(f"starting embedded PostgreSQL in {work_dir} (fsync off: only reading is measured)")
        dsn = server.start()
        asyncio.run(create_databases(dsn, [DATABASE]))
        database = server.socket_dsn_for(DATABASE)
        asyncio.run(migrations.apply(database))
        built = 0
        for postings in (options.small_postings, options.postings):
            transactions = postings // 2
            progress(f"building the ledger up to {transactions * 2:,} postings")
            asyncio.run(grow(database, built, transactions))
            built = transactions
            progress(f"exporting {transactions * 2:,} postings, and COPY of the same rows")
            sizes.append(measure(database, work_dir))
    finally:
        server.destroy()
        shutil.rmtree(work_dir, ignore_errors=True)
    print(render(sizes), flush=True)
    print(f"  ({time.perf_counter() - began:.0f} s in all; machine: {machine()['cpu']}, {machine()['nproc']} CPUs)")
    if options.json:
        options.json.write_text(json.dumps({"sizes": sizes, "machine": machine()}, indent=2))
    worst = min(size["copy_s"] / size["export_s"] for size in sizes)
    return 1 if options.strict and worst < GOAL_RATIO else 0
