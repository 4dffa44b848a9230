"""Billing: Stripe's events, Checkout, and reconciliation against the ledger.

events.py (Stripe's payload views), handlers.py (what each event type does), service.py (the webhook,
storing and retrying events, Checkout), reconciliation.py (finance's reconciliation and the audit checks),
queries.py (every SQL statement), schemas.py (bodies), controllers.py (routes).
"""

from entitlements.billing.lookup import events_by_id, users_of_stripe_id
from entitlements.billing.reconciliation import AUDIT_CHECKS, reconcile
from entitlements.billing.schemas import EventSummary, ReconciliationOut
from entitlements.billing.service import (
    StripeGateway,
    checkout_request_json_schema,
    make_gateway,
    reapply_pending_events,
)

__all__ = [
    "AUDIT_CHECKS",
    "EventSummary",
    "ReconciliationOut",
    "StripeGateway",
    "checkout_request_json_schema",
    "events_by_id",
    "make_gateway",
    "reapply_pending_events",
    "reconcile",
    "users_of_stripe_id",
]
