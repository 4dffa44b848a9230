"""Goodwill grants, a user's history, finance's transaction list and the audit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

import ledger
from entitlements.accounts.schemas import GrantCreate, GrantOut, HistoryPage, TransactionsPage
from entitlements.errors import Forbidden
from entitlements.keys import Caller
from entitlements.schemas import Balance, aware


async def grant(
    ledger_service: ledger.Ledger,
    caller: Caller,
    user_id: str,
    body: GrantCreate,
    *,
    key: str,
    support_grant_moments_max: int,
) -> GrantOut:
    """Credits moments as goodwill. Support is capped per grant; an admin is not."""
    if caller.role == "support" and body.moments > support_grant_moments_max:
        raise Forbidden(f"support may grant at most {support_grant_moments_max} moments at once; ask an admin")
    result = await ledger_service.submit(
        ledger.Credit(
            # Scoped by the caller's key: two callers' Idempotency-Keys never collide.
            key=f"grant:{caller.key_id}:{key}",
            user_id=user_id,
            actor=caller.actor,
            reason=body.reason,
            amount=body.moments,
            kind="grant",
            category=body.category,
            expires_at=aware(body.expires_at, "expires_at"),
        )
    )
    assert result.transaction_id is not None
    return GrantOut(transaction_id=result.transaction_id, balance=Balance(available=result.available, held=result.held))


async def history(ledger_service: ledger.Ledger, user_id: str, *, limit: int, cursor: str | None) -> HistoryPage:
    page = await ledger_service.history(user_id, limit=limit, cursor=cursor)
    return HistoryPage(items=page.items, next_cursor=page.next_cursor)


async def transactions(
    ledger_service: ledger.Ledger,
    read_pool: asyncpg.Pool,
    *,
    since: datetime | None,
    until: datetime | None,
    kind: ledger.TransactionKind | None,
    limit: int,
    cursor: str | None,
) -> TransactionsPage:
    page = await ledger_service.transactions(
        since=since, until=until, kind=kind, limit=limit, cursor=cursor, connection=read_pool
    )
    return TransactionsPage(items=page.items, next_cursor=page.next_cursor)


async def audit(ledger_service: ledger.Ledger, extra_checks: Sequence[ledger.ExtraCheck]) -> ledger.AuditReport:
    return await ledger_service.audit(extra_checks)
