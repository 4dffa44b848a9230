"""The approvals endpoints: list, approve, reject (support, not the requester; admin)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from entitlements.approvals import service
from entitlements.approvals.schemas import ApprovalDecision, ApprovalOut, ApprovalsPage, ApprovalStatus
from entitlements.approvals.service import APPROVAL_ID_MAX, ApprovalEffect
from entitlements.http import CursorQuery, LedgerService, PageLimit, Pool, TheCaller

ApprovalIdPath = Annotated[int, PathParameter(ge=1, le=APPROVAL_ID_MAX, description="The approval's id.")]
StatusQuery = Annotated[ApprovalStatus | None, QueryParameter(description="Only approvals in this status.")]
Effects = NamedDependency[Mapping[str, ApprovalEffect]]


class ApprovalsController(Controller):
    path = "/v1/approvals"
    tags = ["approvals"]
    opt = {"roles": ("support",)}

    @get(operation_id="listApprovals", summary="Grants and refunds waiting for (or decided by) a second person")
    async def list_approvals(
        self, pool: Pool, page_limit: PageLimit, cursor: CursorQuery = None, status: StatusQuery = None
    ) -> ApprovalsPage:
        return await service.list_approvals(pool, status=status, limit=page_limit, cursor=cursor)

    @post(
        "/{approval_id:int}/approve",
        operation_id="approveApproval",
        summary="Approve a pending grant or refund: it takes effect now (never the requester's own)",
        status_code=200,
    )
    async def approve(
        self,
        pool: Pool,
        ledger_service: LedgerService,
        caller: TheCaller,
        approval_effects: Effects,
        approval_id: ApprovalIdPath,
        data: JSONBody[ApprovalDecision],
    ) -> ApprovalOut:
        return await service.approve(pool, ledger_service, caller, approval_id, data, approval_effects)

    @post(
        "/{approval_id:int}/reject",
        operation_id="rejectApproval",
        summary="Reject a pending grant or refund: nothing happens (never the requester's own)",
        status_code=200,
    )
    async def reject(
        self,
        pool: Pool,
        caller: TheCaller,
        approval_effects: Effects,
        approval_id: ApprovalIdPath,
        data: JSONBody[ApprovalDecision],
    ) -> ApprovalOut:
        return await service.reject(pool, caller, approval_id, data, approval_effects)
