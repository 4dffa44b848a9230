"""Billing: Stripe's events, Checkout, and reconciliation against the ledger.

events.py (Stripe's payload views), effects.py (what a handler works with and answers), handlers.py (what
each event type does), clawbacks.py (refunds and disputes), gateway.py (outgoing calls to Stripe),
service.py (the webhook, storing, applying, retrying and re-applying events, Checkout), reconciliation.py
(finance's reconciliation and the audit checks), queries.py (every SQL statement), schemas.py (bodies),
controllers.py (routes).
"""

from entitlements.billing.gateway import StripeGateway, make_gateway
from entitlements.billing.lookup import events_by_id, users_of_stripe_id
from entitlements.billing.reconciliation import AUDIT_CHECKS, reconcile
from entitlements.billing.schemas import EventSummary, ReconciliationOut
from entitlements.billing.service import (
    EventBacklog,
    checkout_request_json_schema,
    event_backlog,
    list_events,
    reapply_event,
    reapply_pending_events,
    refresh_metrics,
)

__all__ = [
    "AUDIT_CHECKS",
    "EventBacklog",
    "EventSummary",
    "ReconciliationOut",
    "StripeGateway",
    "checkout_request_json_schema",
    "event_backlog",
    "events_by_id",
    "list_events",
    "make_gateway",
    "reapply_event",
    "reapply_pending_events",
    "reconcile",
    "refresh_metrics",
    "users_of_stripe_id",
]
