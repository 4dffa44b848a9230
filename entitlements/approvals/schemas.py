"""Approvals: a support grant or refund above the approval threshold, and a second person's decision."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from entitlements.schemas import Reason, Struct

ApprovalKind = Literal["grant", "refund"]
# `expired`: still pending in the table, but past its expiry; it can no longer be approved.
ApprovalStatus = Literal["pending", "approved", "rejected", "expired"]


class ApprovalPending(Struct, frozen=True):
    """The 202 answer of a grant or refund that waits for a second person."""

    approval_id: int
    status: Literal["pending_approval"] = "pending_approval"


class ApprovalDecision(Struct, frozen=True):
    reason: Reason


class ApprovalOut(Struct, frozen=True):
    id: int
    kind: ApprovalKind
    status: ApprovalStatus
    user_id: str
    # The generation to refund (refunds only).
    generation_id: str | None
    moments: int
    # The grant's lot: its category and expiry (grants only).
    category: str | None
    grant_expires_at: datetime | None
    reason: str
    # The requester and the decider as the ledger records actors (`key:{id}:{name}`).
    requested_by: str
    requested_at: datetime
    # After this a pending approval can no longer be approved.
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    # The ledger transaction the approval made.
    transaction_id: int | None


class ApprovalsPage(Struct, frozen=True):
    items: list[ApprovalOut]
    next_cursor: str | None
