"""One measured export in a process of its own, so that its peak RSS is its own: `python -m bench.export.child
DSN WORK_DIR`. Prints one JSON line: the export's rows, seconds and SHA-256, the same rows by PostgreSQL's
own `COPY (…) TO STDOUT` (written to a file, like the export), and the process's peak RSS before and after."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from entitlements.finance import ExportRequest, export_to_file, queries

TIMEOUT_MS = 3_600_000
# Each figure is the best of this many runs, baseline and export taking turns (the machine is shared).
ROUNDS = 2


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(dsn: str, work_dir: Path) -> dict[str, object]:
    rss_before = peak_rss_mib()
    connection = await asyncpg.connect(dsn)
    try:
        # PostgreSQL's own COPY of exactly the export's rows (its query, bound as the export binds it for the
        # whole ledger): what is left is the export's own cost (its snapshot, the SHA-256, the writing).
        plain = queries.export_rows("postings", "csv")
        bounds = ("0", 0, datetime(1, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
        copy_s, export_s, rows, sha256 = [], [], 0, ""
        # Warm the cache: both sides then read from memory.
        await connection.copy_from_query(plain, *bounds, output=str(work_dir / "warm.csv"), format="csv")
        for _ in range(ROUNDS):
            began = time.perf_counter()
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                status = await connection.copy_from_query(
                    plain, *bounds, output=str(work_dir / "copy.csv"), format="csv", header=True
                )
            copy_s.append(time.perf_counter() - began)
            copied = int(status.split()[-1])
            began = time.perf_counter()
            manifest = await export_to_file(
                connection,
                ExportRequest(dataset="postings", format="csv"),
                work_dir / "export.csv",
                statement_timeout_ms=TIMEOUT_MS,
            )
            export_s.append(time.perf_counter() - began)
            rows, sha256 = manifest.rows, manifest.sha256
            assert rows == copied, (rows, copied)
        return {
            "rows": rows,
            "export_s": min(export_s),
            "copy_s": min(copy_s),
            "export_bytes": (work_dir / "export.csv").stat().st_size,
            "copy_bytes": (work_dir / "copy.csv").stat().st_size,
            "sha256": sha256,
            "rss_before_mib": rss_before,
            "peak_rss_mib": peak_rss_mib(),
        }
    finally:
        await connection.close()
        for name in ("warm.csv", "copy.csv", "export.csv"):
            (work_dir / name).unlink(missing_ok=True)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(sys.argv[1], Path(sys.argv[2])))))
