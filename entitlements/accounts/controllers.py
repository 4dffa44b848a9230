"""Goodwill grants, a user's ledger, finance's transactions and the audit."""

from __future__ import annotations

from litestar import Controller, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody

import ledger
from entitlements.accounts import service
from entitlements.accounts.schemas import GrantCreate, GrantOut, HistoryPage, TransactionsPage
from entitlements.approvals import ApprovalPending
from entitlements.http import (
    AppSettings,
    AuditChecks,
    CursorQuery,
    IdempotencyKey,
    LedgerService,
    PageLimit,
    Pool,
    TheCaller,
    TimeWindow,
    UserIdPath,
    answer_response,
)


class AccountsController(Controller):
    tags = ["ledger"]

    @post(
        "/v1/users/{user_id:str}/grants",
        operation_id="createGrant",
        summary="Grant goodwill moments (support: promotional, capped per grant and per day, large ones approved)",
        description="Support may grant promotional moments only, at most SUPPORT_GRANT_MOMENTS_MAX at once and "
        "SUPPORT_GRANT_DAILY_MOMENTS_MAX per person per UTC day; a support grant above APPROVAL_THRESHOLD_MOMENTS "
        "answers 202 and takes effect once a second person approves it (`/v1/approvals`).",
        opt={"roles": ("support",), "idempotent": True},
        status_code=201,
        responses={202: ResponseSpec(ApprovalPending, description="Waits for a second person's approval")},
    )
    async def create_grant(
        self,
        pool: Pool,
        ledger_service: LedgerService,
        caller: TheCaller,
        settings: AppSettings,
        idempotency_key: IdempotencyKey,
        user_id: UserIdPath,
        data: JSONBody[GrantCreate],
    ) -> Response[GrantOut]:
        answer = await service.grant(
            pool, ledger_service, caller, user_id, data, key=idempotency_key, limits=settings.api
        )
        return answer_response(answer.granted, answer.pending, 201)

    @get(
        "/v1/users/{user_id:str}/ledger",
        operation_id="getUserLedger",
        summary="A user's ledger, newest first, with each transaction's effect on their balances",
        opt={"roles": ("support", "finance")},
    )
    async def get_user_ledger(
        self, ledger_service: LedgerService, user_id: UserIdPath, page_limit: PageLimit, cursor: CursorQuery = None
    ) -> HistoryPage:
        return await service.history(ledger_service, user_id, limit=page_limit, cursor=cursor)

    @get(
        "/v1/ledger/transactions",
        operation_id="listLedgerTransactions",
        summary="Ledger transactions with their postings, in id order",
        opt={"roles": ("finance",)},
    )
    async def list_transactions(
        self,
        ledger_service: LedgerService,
        read_pool: Pool,
        window: TimeWindow,
        page_limit: PageLimit,
        cursor: CursorQuery = None,
        kind: FromQuery[ledger.TransactionKind | None] = None,
    ) -> TransactionsPage:
        return await service.transactions(
            ledger_service,
            read_pool,
            since=window.since,
            until=window.until,
            kind=kind,
            limit=page_limit,
            cursor=cursor,
        )

    @get(
        "/v1/ledger/audit",
        operation_id="auditLedger",
        summary="Check every ledger invariant",
        opt={"roles": ("finance",)},
    )
    async def audit_ledger(self, ledger_service: LedgerService, audit_checks: AuditChecks) -> ledger.AuditReport:
        return await service.audit(ledger_service, audit_checks)
