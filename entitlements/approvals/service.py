"""Four eyes on large goodwill: a support grant or refund above APPROVAL_THRESHOLD_MOMENTS is stored as a
pending approval instead of taking effect, and takes effect only when a second person approves it.

"Person" is an API key's name (rotation keeps it): the requester's other keys are the requester too, and
neither the service nor the database (a CHECK) lets a person decide their own request. Deciding locks the
approval's row, so a concurrent approve and reject (or two approvals) decide it once; approving runs the
effect (`ApprovalEffect.execute`, given by the composition root: the grant's or the refund's own code) in
the same transaction as the decision, so an approval is approved exactly when its ledger transaction
exists. Repeating the same decision by the same person answers the approval as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Literal

import asyncpg

import ledger
from entitlements.approvals import queries
from entitlements.approvals.schemas import ApprovalDecision, ApprovalOut, ApprovalPending, ApprovalsPage, ApprovalStatus
from entitlements.errors import Conflict, Forbidden, NotFound
from entitlements.keys import Caller

APPROVALS_CURSOR = "a1"
APPROVALS_OF_USER_MAX = 100
# Ids stay within what a JSON number carries exactly, like every id of this API.
APPROVAL_ID_MAX = (1 << 53) - 1


Execute = Callable[[ledger.Connection, ledger.Ledger, ApprovalOut], Awaitable[int]]
# Given the requester (the person) and the UTC day the request was counted against, if any.
OnReject = Callable[[ledger.Connection, ApprovalOut, str, date | None], Awaitable[None]]


class ApprovalEffect:
    """What approving (and rejecting) an approval of one kind does, inside the decision's transaction.
    `execute` returns the ledger transaction it wrote. (A plain class, not a dataclass: dependency
    injection checks it by isinstance rather than by resolving its fields' annotations.)"""

    __slots__ = ("execute", "on_reject")

    def __init__(self, execute: Execute, on_reject: OnReject | None = None) -> None:
        self.execute = execute
        self.on_reject = on_reject


def needs_approval(caller: Caller, moments: int, threshold_moments: int) -> bool:
    """Support's grants and refunds above the threshold wait for a second person; an admin's do not (an
    admin is that second person, and could make a key for a second name anyway)."""
    return caller.role == "support" and moments > threshold_moments


def _out(row: asyncpg.Record) -> ApprovalOut:
    return ApprovalOut(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        user_id=row["user_id"],
        generation_id=str(row["generation_id"]) if row["generation_id"] is not None else None,
        moments=row["moments"],
        category=row["category"],
        grant_expires_at=row["grant_expires_at"],
        reason=row["reason"],
        requested_by=row["requested_by"],
        requested_at=row["created_at"],
        expires_at=row["expires_at"],
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        decision_reason=row["decision_reason"],
        transaction_id=row["transaction_id"],
    )


async def request_in(
    connection: ledger.Connection,
    *,
    kind: Literal["grant", "refund"],
    caller: Caller,
    user_id: str,
    moments: int,
    reason: str,
    ttl_s: int,
    category: str | None = None,
    grant_expires_at: datetime | None = None,
    generation_id: uuid.UUID | None = None,
    counted_day: date | None = None,
) -> ApprovalPending:
    """Inside the caller's transaction (the request's idempotency claim and checks): a pending approval."""
    row = await connection.fetchrow(
        queries.INSERT_APPROVAL,
        kind,
        user_id,
        generation_id,
        moments,
        category,
        grant_expires_at,
        reason,
        caller.key_id,
        caller.actor,
        caller.name,
        counted_day,
        ttl_s,
    )
    assert row is not None
    return ApprovalPending(approval_id=row["id"])


async def get(connection: ledger.Connection | asyncpg.Pool, approval_id: int) -> ApprovalOut:
    row = await connection.fetchrow(queries.FETCH_APPROVAL, approval_id)
    if row is None:
        raise NotFound(f"approval {approval_id} does not exist")
    return _out(row)


async def list_approvals(
    pool: asyncpg.Pool, *, status: ApprovalStatus | None, limit: int, cursor: str | None
) -> ApprovalsPage:
    before = ledger.decode_id_cursor(cursor, APPROVALS_CURSOR)
    rows = await pool.fetch(queries.LIST_APPROVALS, status, before, limit + 1)
    items = [_out(row) for row in rows[:limit]]
    next_cursor = ledger.encode_id_cursor(APPROVALS_CURSOR, items[-1].id) if len(rows) > limit else None
    return ApprovalsPage(items=items, next_cursor=next_cursor)


async def of_user(pool: asyncpg.Pool, user_id: str) -> list[ApprovalOut]:
    """A user's approvals, newest first (at most APPROVALS_OF_USER_MAX)."""
    return [_out(row) for row in await pool.fetch(queries.LIST_FOR_USER, user_id, APPROVALS_OF_USER_MAX)]


async def of_transactions(pool: asyncpg.Pool, transaction_ids: Sequence[int]) -> dict[int, ApprovalOut]:
    """The approvals that made these ledger transactions, by transaction id."""
    if not transaction_ids:
        return {}
    rows = await pool.fetch(queries.BY_TRANSACTIONS, list(transaction_ids))
    return {row["transaction_id"]: _out(row) for row in rows}


def _decided_by_same(approval: ApprovalOut, caller: Caller, status: str) -> bool:
    return approval.status == status and approval.decided_by == caller.actor


async def _lock_undecided(
    connection: ledger.Connection, caller: Caller, approval_id: int, decision: Literal["approved", "rejected"]
) -> tuple[asyncpg.Record, ApprovalOut] | ApprovalOut:
    """The approval, locked, if it may be decided now; the approval as it is if this very person already
    made this very decision (a repeat); else the refusal."""
    row = await connection.fetchrow(queries.LOCK_APPROVAL, approval_id)
    if row is None:
        raise NotFound(f"approval {approval_id} does not exist")
    approval = _out(row)
    if _decided_by_same(approval, caller, decision):
        return approval
    if row["requested_by_person"] == caller.name:
        raise Forbidden(f"approval {approval_id} was requested by {caller.name}: a second person must decide it")
    if approval.status == "expired":
        raise Conflict(f"approval {approval_id} expired at {approval.expires_at.isoformat()} undecided")
    if approval.status != "pending":
        raise Conflict(f"approval {approval_id} is already {approval.status} (by {approval.decided_by})")
    return row, approval


async def _decide(
    connection: ledger.Connection,
    approval_id: int,
    status: Literal["approved", "rejected"],
    caller: Caller,
    body: ApprovalDecision,
    transaction_id: int | None,
) -> ApprovalOut:
    row = await connection.fetchrow(
        queries.DECIDE_APPROVAL,
        approval_id,
        status,
        caller.key_id,
        caller.actor,
        caller.name,
        body.reason,
        transaction_id,
    )
    assert row is not None
    return _out(row)


async def approve(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    caller: Caller,
    approval_id: int,
    body: ApprovalDecision,
    effects: Mapping[str, ApprovalEffect],
) -> ApprovalOut:
    async with pool.acquire() as connection, connection.transaction():
        found = await _lock_undecided(connection, caller, approval_id, "approved")
        if isinstance(found, ApprovalOut):
            return found
        _, approval = found
        transaction_id = await effects[approval.kind].execute(connection, ledger_service, approval)
        return await _decide(connection, approval_id, "approved", caller, body, transaction_id)


async def reject(
    pool: asyncpg.Pool, caller: Caller, approval_id: int, body: ApprovalDecision, effects: Mapping[str, ApprovalEffect]
) -> ApprovalOut:
    async with pool.acquire() as connection, connection.transaction():
        found = await _lock_undecided(connection, caller, approval_id, "rejected")
        if isinstance(found, ApprovalOut):
            return found
        locked, approval = found
        on_reject = effects[approval.kind].on_reject
        if on_reject is not None:
            await on_reject(connection, approval, locked["requested_by_person"], locked["counted_day"])
        row = await connection.fetchrow(
            queries.DECIDE_APPROVAL,
            approval_id,
            "rejected",
            caller.key_id,
            caller.actor,
            caller.name,
            body.reason,
            None,
        )
        assert row is not None
        return _out(row)
