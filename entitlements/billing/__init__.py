"""Billing: Stripe's events, Checkout, and reconciliation against the ledger."""

from entitlements.billing.service import (
    AUDIT_CHECKS,
    StripeGateway,
    checkout_request_json_schema,
    make_gateway,
    reapply_pending_events,
)

__all__ = ["AUDIT_CHECKS", "StripeGateway", "checkout_request_json_schema", "make_gateway", "reapply_pending_events"]
