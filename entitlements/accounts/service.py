"""Goodwill grants (with support's limits), a user's history, finance's transaction list and the audit.

Support's limits, checked here for the API and the console alike: promotional moments only; at most
SUPPORT_GRANT_MOMENTS_MAX per grant; at most SUPPORT_GRANT_DAILY_MOMENTS_MAX per person (the key's name)
per UTC day, requests waiting for approval included (a rejection gives them back); above
APPROVAL_THRESHOLD_MOMENTS a grant waits for a second person (`entitlements.approvals`). An admin is
limited by none of these.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime

import asyncpg

import ledger
from entitlements import approvals, idempotency
from entitlements.accounts import queries
from entitlements.accounts.schemas import GrantAnswer, GrantCreate, GrantOut, HistoryPage, TransactionsPage
from entitlements.approvals import ApprovalOut
from entitlements.errors import Forbidden, ValidationFailed
from entitlements.keys import Caller
from entitlements.schemas import Balance, Preview, aware
from entitlements.settings import ApiSettings


async def grant(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    caller: Caller,
    user_id: str,
    body: GrantCreate,
    *,
    key: str,
    limits: ApiSettings,
) -> GrantAnswer:
    """Credits moments as goodwill now, or (support, above the threshold) files it for approval."""
    return await idempotency.once(
        pool,
        caller_key_id=caller.key_id,
        key=key,
        operation="create_grant",
        fingerprint=idempotency.request_hash("create_grant", user_id, body),
        answer=GrantAnswer,
        work=lambda connection: _grant_in(connection, ledger_service, caller, user_id, body, key=key, limits=limits),
    )


async def preview_grant(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    caller: Caller,
    user_id: str,
    body: GrantCreate,
    *,
    limits: ApiSettings,
) -> Preview:
    """The grant tried with the same code and rolled back: balances before and after (after approval, if
    it would wait for one). Raises what the grant would be refused with."""

    async def attempt(connection: ledger.Connection) -> Preview:
        before = await ledger_service.balances(user_id, connection=connection)
        key = f"preview:{uuid.uuid4()}"
        answer = await _grant_in(connection, ledger_service, caller, user_id, body, key=key, limits=limits)
        if answer.pending is not None:
            await _credit_in(connection, ledger_service, _credit(caller.actor, user_id, body, key=key))
        after = await ledger_service.balances(user_id, connection=connection)
        return Preview(before=before, after=after, pending_approval=answer.pending is not None)

    return await idempotency.dry_run(pool, attempt)


def _credit(actor: str, user_id: str, body: GrantCreate, *, key: str, reference: str | None = None) -> ledger.Credit:
    return ledger.Credit(
        key=key,
        user_id=user_id,
        actor=actor,
        reason=body.reason,
        reference=reference,
        amount=body.moments,
        kind="grant",
        category=body.category,
        expires_at=aware(body.expires_at, "expires_at"),
    )


async def _credit_in(
    connection: ledger.Connection, ledger_service: ledger.Ledger, credit: ledger.Credit
) -> ledger.Result:
    (outcome,) = await ledger_service.execute_in(connection, [credit])
    if isinstance(outcome, ledger.LedgerRuleError):
        raise outcome
    assert outcome.transaction_id is not None
    return outcome


async def _grant_in(
    connection: ledger.Connection,
    ledger_service: ledger.Ledger,
    caller: Caller,
    user_id: str,
    body: GrantCreate,
    *,
    key: str,
    limits: ApiSettings,
) -> GrantAnswer:
    expires_at = aware(body.expires_at, "expires_at")
    # Checked before anything is counted or filed: an approval must not wait for a grant that cannot be.
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise ValidationFailed("expires_at", "must be in the future")
    if caller.role == "support":
        counted_day = await _check_support_limits(connection, caller, body, limits)
        if approvals.needs_approval(caller, body.moments, limits.approval_threshold_moments):
            pending = await approvals.request_in(
                connection,
                kind="grant",
                caller=caller,
                user_id=user_id,
                moments=body.moments,
                reason=body.reason,
                ttl_s=limits.approval_ttl_s,
                category=body.category,
                grant_expires_at=expires_at,
                counted_day=counted_day,
            )
            return GrantAnswer(user_id=user_id, pending=pending)
    # Scoped by the caller's key: two callers' Idempotency-Keys never collide.
    result = await _credit_in(
        connection, ledger_service, _credit(caller.actor, user_id, body, key=f"grant:{caller.key_id}:{key}")
    )
    assert result.transaction_id is not None
    granted = GrantOut(
        transaction_id=result.transaction_id, balance=Balance(available=result.available, held=result.held)
    )
    return GrantAnswer(user_id=user_id, granted=granted)


async def _check_support_limits(
    connection: ledger.Connection, caller: Caller, body: GrantCreate, limits: ApiSettings
) -> date:
    """Support's per-grant and daily limits; counts the grant against the person's day (the UTC day it
    was counted on is returned)."""
    if body.category != "promotional":
        raise Forbidden(f"support may grant promotional moments only, not {body.category}; ask an admin")
    if body.moments > limits.support_grant_moments_max:
        raise Forbidden(f"support may grant at most {limits.support_grant_moments_max} moments at once; ask an admin")
    daily_max = limits.support_grant_daily_moments_max
    counted = await connection.fetchrow(queries.COUNT_DAILY_GRANT, caller.name, body.moments, daily_max)
    if counted is None:
        granted_today = await connection.fetchval(queries.GRANTED_TODAY, caller.name)
        raise Forbidden(
            f"{caller.name} has granted {granted_today} of the {daily_max} moments support may grant per person "
            f"per UTC day; {body.moments} more would pass it; ask an admin"
        )
    day: date = counted["day"]
    return day


async def grant_approved(connection: ledger.Connection, ledger_service: ledger.Ledger, approval: ApprovalOut) -> int:
    """The approved grant, credited as the requester's (the approval names who approved it)."""
    assert approval.kind == "grant"
    assert approval.category is not None
    body = GrantCreate(
        moments=approval.moments,
        reason=approval.reason,
        category=approval.category,  # type: ignore[arg-type]
        expires_at=approval.grant_expires_at,
    )
    credit = _credit(
        approval.requested_by,
        approval.user_id,
        body,
        key=f"approval:{approval.id}:grant",
        reference=f"approval:{approval.id}",
    )
    result = await _credit_in(connection, ledger_service, credit)
    assert result.transaction_id is not None
    return result.transaction_id


async def release_daily_grant(
    connection: ledger.Connection, approval: ApprovalOut, person: str, counted_day: date | None
) -> None:
    """A rejected grant no longer counts against its requester's day."""
    if counted_day is not None:
        await connection.execute(queries.RELEASE_DAILY_GRANT, person, counted_day, approval.moments)


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
