"""`moments audit`: every ledger invariant, one line each; exit status 1 if any fails."""

from __future__ import annotations

import asyncpg

import ledger
from entitlements.app import EXTRA_AUDIT_CHECKS


async def run_audit(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        report = await ledger.audit(connection, EXTRA_AUDIT_CHECKS)
    finally:
        await connection.close()
    for check in report.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    print("audit passed" if report.ok else "audit FAILED")
    return 0 if report.ok else 1
