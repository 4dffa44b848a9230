"""Accounts: goodwill grants, a user's history, finance's transactions and audit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

import ledger
from entitlements.approvals import ApprovalPending
from entitlements.schemas import Balance, Reason, Struct


class GrantCreate(Struct, frozen=True):
    moments: Annotated[int, msgspec.Meta(ge=1, le=ledger.AMOUNT_MOMENTS_MAX)]
    reason: Reason
    category: ledger.LotCategory = "promotional"
    expires_at: datetime | None = None


class GrantOut(Struct, frozen=True):
    transaction_id: int
    balance: Balance


class GrantAnswer(Struct, frozen=True):
    """What a grant request answered (stored for its Idempotency-Key): granted now, or waiting for a
    second person. `user_id` lets the console find the user by the key."""

    user_id: str
    granted: GrantOut | None = None
    pending: ApprovalPending | None = None


class HistoryPage(Struct, frozen=True):
    # The ledger's own item types are the response: one definition of each field, not two.
    items: list[ledger.HistoryItem]
    next_cursor: str | None


class TransactionsPage(Struct, frozen=True):
    items: list[ledger.TransactionItem]
    next_cursor: str | None
