"""Billing: the bodies of the webhook's answer, stored events, Checkout, and finance's reconciliation."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from entitlements.schemas import Struct

EventState = Literal["pending", "applied", "applied_without_effect", "failed"]


class WebhookOut(Struct, frozen=True):
    id: str
    # applied / applied_without_effect (understood; nothing to do) / duplicate (it had ended before) /
    # pending (stored; waits for what it refers to, retried by the sweeper) / failed (stored; it cannot be
    # applied as it is; an admin re-applies it after a fix).
    status: Literal["applied", "applied_without_effect", "duplicate", "pending", "failed"]
    detail: str | None


class StripeEventOut(Struct, frozen=True):
    """A stored Stripe event and how far it is in its life (`state`)."""

    id: str
    type: str
    created: datetime
    livemode: bool
    state: EventState
    attempts: int
    # Why its last attempt failed (pending, failed), and what applying it did (applied, without effect).
    last_error: str | None
    outcome: str | None
    ledger_kind: str | None
    ledger_moments: int | None
    received_at: datetime
    applied_at: datetime | None
    failed_at: datetime | None
    reapplied_at: datetime | None
    reapplied_by: str | None


class StripeEventPage(Struct, frozen=True):
    items: list[StripeEventOut]
    next_cursor: str | None


class CheckoutCreate(Struct, frozen=True):
    # Exactly one of the two: a moment pack's id, or a purchasable tier's name (pricing/catalog.toml).
    pack: str | None = None
    tier: str | None = None


class CheckoutOut(Struct, frozen=True):
    url: str
    id: str


class ReconciledTransaction(Struct, frozen=True):
    transaction_id: int
    kind: str
    user_id: str
    moments: int
    reference: str | None
    created_at: datetime


class ReconciledEvent(Struct, frozen=True):
    event_id: str
    type: str
    created: datetime
    state: EventState
    # Ended applied, with or without effect.
    applied: bool
    outcome: str | None
    last_error: str | None
    attempts: int
    expected_kind: str | None
    expected_moments: int | None
    transactions: list[ReconciledTransaction]


class Mismatch(Struct, frozen=True):
    code: Literal[
        "event_not_applied",
        "event_failed",
        "event_without_transaction",
        "transaction_without_event",
        "unexpected_transaction",
        "kind_differs",
        "amount_differs",
        "duplicate_transactions",
    ]
    detail: str
    event_id: str | None = None
    transaction_id: int | None = None


class KindTotal(Struct, frozen=True):
    kind: str
    # What the events recorded, and what the ledger holds (including transactions without an event).
    stripe_moments: int
    ledger_moments: int
    ledger_transactions: int


class ReconciliationTotals(Struct, frozen=True):
    events: int
    applied: int
    # Stored and not ended yet (pending), or ended failed; both are mismatches.
    not_applied: int
    failed: int
    credited_moments: int
    clawed_back_moments: int
    by_kind: list[KindTotal]


class ReconciliationOut(Struct, frozen=True):
    ok: bool
    since: datetime | None
    until: datetime | None
    events: list[ReconciledEvent]
    transactions_without_event: list[ReconciledTransaction]
    totals: ReconciliationTotals
    mismatches: list[Mismatch]


class EventSummary(Struct, frozen=True):
    """A stored Stripe event, as the console shows it beside the ledger transaction it made."""

    id: str
    type: str
    created: datetime
    outcome: str | None
