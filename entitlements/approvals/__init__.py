"""Approvals: four eyes on support's grants and refunds above the approval threshold."""

from entitlements.approvals.schemas import (
    ApprovalDecision,
    ApprovalKind,
    ApprovalOut,
    ApprovalPending,
    ApprovalsPage,
    ApprovalStatus,
)
from entitlements.approvals.service import (
    APPROVAL_ID_MAX,
    ApprovalEffect,
    approve,
    get,
    list_approvals,
    needs_approval,
    of_transactions,
    of_user,
    reject,
    request_in,
)

__all__ = [
    "APPROVAL_ID_MAX",
    "ApprovalDecision",
    "ApprovalEffect",
    "ApprovalKind",
    "ApprovalOut",
    "ApprovalPending",
    "ApprovalStatus",
    "ApprovalsPage",
    "approve",
    "get",
    "list_approvals",
    "needs_approval",
    "of_transactions",
    "of_user",
    "reject",
    "request_in",
]
