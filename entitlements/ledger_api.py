"""Ledger endpoints: support's goodwill grants, a user's history, finance's transactions and audit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

import ledger
from entitlements.auth import caller_of
from entitlements.errors import ProblemError, ValidationFailed
from entitlements.http import aware, check_user_id, idempotency_key, ledger_problem, page_limit, strict_body
from entitlements.schemas import REASON_CHARS_MAX, TEXT_PATTERN, Balance, Struct


class GrantCreate(Struct, frozen=True):
    moments: Annotated[int, msgspec.Meta(ge=1, le=ledger.AMOUNT_MOMENTS_MAX)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=REASON_CHARS_MAX, pattern=TEXT_PATTERN)]
    category: Literal["paid", "subscription", "promotional"] = "promotional"
    expires_at: datetime | None = None


class GrantOut(Struct, frozen=True):
    transaction_id: int
    balance: Balance


class HistoryPage(Struct, frozen=True):
    # The ledger's own item types are the response: one definition of each field, not two.
    items: list[ledger.HistoryItem]
    next_cursor: str | None


class TransactionsPage(Struct, frozen=True):
    items: list[ledger.TransactionItem]
    next_cursor: str | None


TRANSACTION_KINDS = (
    "purchase",
    "subscription_grant",
    "grant",
    "hold",
    "capture",
    "void",
    "refund",
    "expiry",
    "clawback",
    "clawback_reversal",
)


def ledger_of(request: Request[Any, Any, Any]) -> ledger.Ledger:
    service: ledger.Ledger = request.app.state.ledger
    return service


async def submit_or_problem(request: Request[Any, Any, Any], operation: ledger.AnyOperation) -> ledger.Result:
    try:
        return await ledger_of(request).submit(operation)
    except ledger.LedgerRuleError as refused:
        raise ledger_problem(refused) from None
    except ledger.LedgerUnavailable:
        raise ProblemError(
            503, "unavailable", "the ledger could not complete the operation; retry with the same key"
        ) from None


@post(
    "/v1/users/{user_id:str}/grants",
    operation_id="createGrant",
    opt={"roles": ("support",)},
    tags=["ledger"],
    status_code=201,
)
async def create_grant(
    request: Request[Any, Any, Any], user_id: FromPath[str], data: JSONBody[GrantCreate]
) -> GrantOut:
    data = await strict_body(request, GrantCreate)
    check_user_id(user_id)
    key = idempotency_key(request)
    caller = caller_of(request)
    cap = request.app.state.settings.api.support_grant_moments_max
    if caller.role == "support" and data.moments > cap:
        raise ProblemError(403, "forbidden", f"support may grant at most {cap} moments at once; ask an admin")
    result = await submit_or_problem(
        request,
        ledger.Credit(
            key=f"grant:{caller.key_id}:{key}",
            user_id=user_id,
            actor=caller.actor,
            reason=data.reason,
            amount=data.moments,
            kind="grant",
            category=data.category,
            expires_at=aware(data.expires_at),
        ),
    )
    assert result.transaction_id is not None
    return GrantOut(transaction_id=result.transaction_id, balance=Balance(available=result.available, held=result.held))


@get(
    "/v1/users/{user_id:str}/ledger",
    operation_id="getUserLedger",
    opt={"roles": ("support", "finance")},
    tags=["ledger"],
)
async def get_user_ledger(
    request: Request[Any, Any, Any],
    user_id: FromPath[str],
    limit: FromQuery[int | None] = None,
    cursor: FromQuery[str | None] = None,
) -> HistoryPage:
    check_user_id(user_id)
    try:
        page = await ledger_of(request).history(user_id, limit=page_limit(request, limit), cursor=cursor)
    except ledger.InvalidCursor as invalid:
        raise ValidationFailed("cursor", str(invalid)) from None
    return HistoryPage(items=page.items, next_cursor=page.next_cursor)


@get("/v1/ledger/transactions", operation_id="listLedgerTransactions", opt={"roles": ("finance",)}, tags=["ledger"])
async def list_transactions(
    request: Request[Any, Any, Any],
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    kind: Annotated[str | None, QueryParameter(description="a transaction kind")] = None,
    limit: FromQuery[int | None] = None,
    cursor: FromQuery[str | None] = None,
) -> TransactionsPage:
    if kind is not None and kind not in TRANSACTION_KINDS:
        raise ValidationFailed(
            "kind", f"must be one of {', '.join(TRANSACTION_KINDS)}", allowed=list(TRANSACTION_KINDS)
        )
    since, until = aware(since), aware(until)
    if since is not None and until is not None and since > until:
        raise ValidationFailed("until", "must not be before since")
    try:
        page = await ledger_of(request).transactions(
            since=since,
            until=until,
            kind=kind,
            limit=page_limit(request, limit),
            cursor=cursor,
            connection=request.app.state.read_pool,
        )
    except ledger.InvalidCursor as invalid:
        raise ValidationFailed("cursor", str(invalid)) from None
    return TransactionsPage(items=page.items, next_cursor=page.next_cursor)


@get("/v1/ledger/audit", operation_id="auditLedger", opt={"roles": ("finance",)}, tags=["ledger"])
async def audit_ledger(request: Request[Any, Any, Any]) -> ledger.AuditReport:
    return await ledger_of(request).audit(request.app.state.extra_audit_checks)


ROUTES = [create_grant, get_user_ledger, list_transactions, audit_ledger]
