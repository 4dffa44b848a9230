"""Stripe's objects as Stripe sends them in webhooks, for the API version the pinned `stripe` library sends
(`CURRENT`) and for the last version before 2025-03-31.basil (`LEGACY`).

Built from the shapes of Stripe's published OpenAPI fixtures (github.com/stripe/openapi,
`openapi/fixtures3.json`: today's for CURRENT, January 2025's for LEGACY): the same fields, in the same
places, with Stripe's types and nulls; `line_items` is never in a Checkout session (webhooks do not carry
it), and after basil a charge names no invoice and an invoice no charge. Values are ours.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import stripe

# What the pinned stripe library sends as Stripe-Version, and what the fake answers with.
CURRENT: str = stripe._api_version._ApiVersion.CURRENT
# The last API version before 2025-03-31.basil moved periods, prices, prorations and payments.
LEGACY = "2024-12-18.acacia"
VERSIONS = (CURRENT, LEGACY)
PERIOD_S = 30 * 86_400
_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}T{time.monotonic_ns()}"


def basil(version: str) -> bool:
    return version >= "2025-03-31"


def now_s() -> int:
    return int(time.time())


def _list(data: list[dict[str, Any]], url: str) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": False, "url": url}


_NO_ADDRESS = {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None, "state": None}


# --- the envelope --------------------------------------------------------------------------------------------


def event(
    event_type: str,
    obj: dict[str, Any],
    *,
    version: str = CURRENT,
    event_id: str | None = None,
    created: int | None = None,
    livemode: bool = False,
    previous_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or unique("evt"),
        "object": "event",
        "api_version": version,
        "created": now_s() if created is None else created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


# --- prices, customers ---------------------------------------------------------------------------------------


def price_object(price_id: str, *, unit_amount: int, recurring: bool) -> dict[str, Any]:
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": 1_721_948_530,
        "currency": "usd",
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": "prod_" + price_id.removeprefix("price_"),
        "recurring": {"interval": "month", "interval_count": 1, "meter": None, "usage_type": "licensed"}
        if recurring
        else None,
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def customer(customer_id: str = "cus_1", *, user_id: str | None = None, version: str = CURRENT) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "id": customer_id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": 1_721_948_530,
        "currency": "usd",
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": "buyer@example.test",
        "invoice_prefix": "7FE1103",
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
        "livemode": False,
        "metadata": {"user_id": user_id} if user_id else {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }
    if basil(version):
        shape["customer_account"] = None
    return shape


# --- subscriptions ---------------------------------------------------------------------------------------------


def subscription(
    *,
    subscription_id: str = "sub_1",
    customer: str = "cus_1",
    status: str = "active",
    price: str = "price_premium_monthly",
    unit_amount: int = 1999,
    period_end: int | None = None,
    cancel_at_period_end: bool = False,
    user_id: str | None = None,
    version: str = CURRENT,
) -> dict[str, Any]:
    """Since basil the period is on the item; before, on the subscription."""
    period_end = now_s() + PERIOD_S if period_end is None else period_end
    period = {"current_period_start": period_end - PERIOD_S, "current_period_end": period_end}
    item: dict[str, Any] = {
        "id": "si_" + subscription_id.removeprefix("sub_"),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": period_end - PERIOD_S,
        "discounts": [],
        "metadata": {},
        "plan": {"id": price, "object": "plan", "active": True, "amount": unit_amount, "interval": "month"},
        "price": price_object(price, unit_amount=unit_amount, recurring=True),
        "quantity": 1,
        "subscription": subscription_id,
        "tax_rates": [],
    }
    shape: dict[str, Any] = {
        "id": subscription_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": period_end - PERIOD_S,
        "billing_thresholds": None,
        "cancel_at": period_end if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": period_end - PERIOD_S,
        "currency": "usd",
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": None,
        "items": _list([item], f"/v1/subscription_items?subscription={subscription_id}"),
        "latest_invoice": None,
        "livemode": False,
        "metadata": {"user_id": user_id} if user_id else {},
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": period_end - PERIOD_S,
        "status": status,
        "test_clock": None,
        "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }
    if basil(version):
        item.update(period)
        shape["billing_mode"] = {"type": "classic"}
        shape["customer_account"] = None
    else:
        shape.update(period)
        shape["discount"] = None
    return shape


def subscription_event(
    event_type: str = "customer.subscription.updated",
    *,
    version: str = CURRENT,
    created: int | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return event(
        event_type, subscription(version=version, **fields), version=version, created=created, event_id=event_id
    )


# --- invoices ----------------------------------------------------------------------------------------------------


def invoice_line(
    *,
    price: str = "price_premium_monthly",
    period_end: int,
    amount: int = 1999,
    proration: bool = False,
    invoice_item: bool = False,
    subscription_id: str | None = "sub_1",
    invoice_id: str = "in_1",
    version: str = CURRENT,
) -> dict[str, Any]:
    """A subscription's line for a period, or (`invoice_item`) a one-off invoice item; either may be a
    proration. Since basil the kind and proration are under `parent`, the price under `pricing`."""
    line: dict[str, Any] = {
        "id": unique("il"),
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "description": "Remaining time on PREMIUM after upgrade" if proration else "1 x PREMIUM (at $19.99 / month)",
        "discount_amounts": [],
        "discountable": not proration,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "period": {"start": period_end - PERIOD_S, "end": period_end},
        "quantity": 1,
        "subscription": subscription_id,
        "pretax_credit_amounts": [],
        "taxes": [],
    }
    credited = {"credited_items": None}
    if basil(version):
        details = {
            "invoice_item": unique("ii") if invoice_item else None,
            "proration": proration,
            "proration_details": credited,
            "subscription": subscription_id,
        }
        line["parent"] = {
            "type": "invoice_item_details" if invoice_item else "subscription_item_details",
            "invoice_item_details": details if invoice_item else None,
            "subscription_item_details": None if invoice_item else details | {"subscription_item": "si_1"},
        }
        line["pricing"] = {
            "type": "price_details",
            "price_details": {"price": price, "product": "prod_" + price.removeprefix("price_")},
            "unit_amount_decimal": str(amount),
        }
        line["subtotal"] = amount
    else:
        line["amount_excluding_tax"] = amount
        line["invoice_item"] = unique("ii") if invoice_item else None
        line["plan"] = None if invoice_item else {"id": price, "object": "plan", "interval": "month"}
        line["price"] = price_object(price, unit_amount=amount, recurring=not invoice_item)
        line["proration"] = proration
        line["proration_details"] = credited
        line["subscription_item"] = None if invoice_item else "si_1"
        line["tax_amounts"] = []
        line["tax_rates"] = []
        line["type"] = "invoiceitem" if invoice_item else "subscription"
        line["unit_amount_excluding_tax"] = str(amount)
    return line


def invoice(
    *,
    invoice_id: str | None = None,
    customer: str = "cus_1",
    subscription_id: str | None = "sub_1",
    lines: list[dict[str, Any]] | None = None,
    price: str = "price_premium_monthly",
    period_end: int | None = None,
    amount_paid: int = 1999,
    user_id: str | None = None,
    billing_reason: str = "subscription_cycle",
    charge: str | None = None,
    payment_intent: str | None = None,
    version: str = CURRENT,
) -> dict[str, Any]:
    """A paid invoice. Before basil it names its subscription, charge and payment intent at the top level
    (by default `ch_for_{invoice}` and `pi_for_{invoice}`); since, its subscription is under
    `parent.subscription_details` and its payments are InvoicePayments."""
    invoice_id = invoice_id or unique("in")
    charge = charge or f"ch_for_{invoice_id}"
    payment_intent = payment_intent or f"pi_for_{invoice_id}"
    period_end = now_s() + PERIOD_S if period_end is None else period_end
    if lines is None:
        lines = [
            invoice_line(
                price=price,
                period_end=period_end,
                amount=amount_paid,
                subscription_id=subscription_id,
                invoice_id=invoice_id,
                version=version,
            )
        ]
    metadata = {"user_id": user_id} if user_id else {}
    paid_at = now_s()
    shape: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Moments",
        "account_tax_ids": None,
        "amount_due": amount_paid,
        "amount_paid": amount_paid,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 1,
        "attempted": True,
        "auto_advance": False,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": paid_at,
        "currency": "usd",
        "custom_fields": None,
        "customer": customer,
        "customer_address": None,
        "customer_email": "buyer@example.test",
        "customer_name": None,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": paid_at,
        "ending_balance": 0,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
        "invoice_pdf": f"https://pay.stripe.test/invoice/{invoice_id}/pdf",
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": _list(lines, f"/v1/invoices/{invoice_id}/lines"),
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": "7FE1103-0001",
        "on_behalf_of": None,
        "payment_settings": {"default_mandate": None, "payment_method_options": None, "payment_method_types": None},
        "period_end": paid_at,
        "period_start": paid_at - PERIOD_S,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "paid",
        "status_transitions": {
            "finalized_at": paid_at,
            "marked_uncollectible_at": None,
            "paid_at": paid_at,
            "voided_at": None,
        },
        "subtotal": amount_paid,
        "subtotal_excluding_tax": amount_paid,
        "test_clock": None,
        "total": amount_paid,
        "total_discount_amounts": [],
        "total_excluding_tax": amount_paid,
        "webhooks_delivered_at": paid_at,
    }
    if basil(version):
        shape["amount_overpaid"] = 0
        shape["automatically_finalizes_at"] = None
        shape["customer_account"] = None
        shape["parent"] = (
            {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": metadata, "subscription": subscription_id},
            }
            if subscription_id is not None
            else None
        )
        shape["total_pretax_credit_amounts"] = []
        shape["total_taxes"] = []
    else:
        shape["application_fee_amount"] = None
        shape["charge"] = charge
        shape["discount"] = None
        shape["paid"] = True
        shape["paid_out_of_band"] = False
        shape["payment_intent"] = payment_intent
        shape["quote"] = None
        shape["subscription"] = subscription_id
        shape["subscription_details"] = {"metadata": metadata}
        shape["tax"] = None
        shape["total_tax_amounts"] = []
        shape["transfer_data"] = None
    return shape


def invoice_paid_event(*, version: str = CURRENT, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return event("invoice.paid", invoice(version=version, **fields), version=version, event_id=event_id)


def invoice_payment(
    *, invoice_id: str, payment_intent: str = "pi_1", amount: int = 1999, status: str = "paid"
) -> dict[str, Any]:
    """Which payment paid which invoice (since basil)."""
    paid_at = now_s()
    return {
        "id": unique("inpay"),
        "object": "invoice_payment",
        "amount_paid": amount if status == "paid" else None,
        "amount_requested": amount,
        "created": paid_at,
        "currency": "usd",
        "invoice": invoice_id,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": payment_intent},
        "status": status,
        "status_transitions": {"canceled_at": None, "paid_at": paid_at if status == "paid" else None},
    }


def invoice_payment_event(*, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return event("invoice_payment.paid", invoice_payment(**fields), event_id=event_id)


# --- Checkout --------------------------------------------------------------------------------------------------


def checkout_session(
    *,
    session_id: str | None = None,
    customer: str | None = "cus_1",
    user_id: str | None = None,
    client_reference_id: str | None = None,
    pack: str | None = "pack_1000",
    payment_intent: str | None = "pi_1",
    payment_link: str | None = None,
    amount_total: int = 999,
    payment_status: str = "paid",
    mode: str = "payment",
    version: str = CURRENT,
) -> dict[str, Any]:
    """A completed session. `pack` and `user_id` are the metadata this service sets on its own sessions;
    a session made elsewhere (a Payment Link, the dashboard) has neither. Never `line_items`."""
    session_id = session_id or unique("cs_test")
    metadata: dict[str, str] = {}
    if user_id:
        metadata["user_id"] = user_id
    if pack:
        metadata["pack"] = pack
    created = now_s()
    shape: dict[str, Any] = {
        "id": session_id,
        "object": "checkout.session",
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": None if payment_link else "https://app.test/checkout/cancel",
        "client_reference_id": client_reference_id or user_id,
        "client_secret": None,
        "consent": None,
        "consent_collection": None,
        "created": created,
        "currency": "usd",
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": customer,
        "customer_creation": "if_required" if payment_link else None,
        "customer_details": {
            "address": _NO_ADDRESS,
            "email": "buyer@example.test",
            "name": "A Buyer",
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": None,
        "expires_at": created + 86_400,
        "invoice": None,
        "invoice_creation": None,
        "livemode": False,
        "locale": None,
        "metadata": metadata,
        "mode": mode,
        "payment_intent": payment_intent if mode == "payment" else None,
        "payment_link": payment_link,
        "payment_method_collection": "if_required" if payment_link else "always",
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "complete",
        "submit_type": None,
        "subscription": "sub_1" if mode == "subscription" else None,
        "success_url": "https://app.test/checkout/success",
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": None,
    }
    if basil(version):
        shape["adaptive_pricing"] = {"enabled": True}
        shape["collected_information"] = {"shipping_details": None}
        shape["customer_account"] = None
        shape["discounts"] = []
        shape["origin_context"] = None
        shape["permissions"] = None
        shape["wallet_options"] = None
        shape["customer_details"] |= {"business_name": None, "individual_name": None}
    else:
        shape["adaptive_pricing"] = None
        shape["shipping_details"] = None
    return shape


def checkout_completed_event(
    *,
    version: str = CURRENT,
    event_type: str = "checkout.session.completed",
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return event(event_type, checkout_session(version=version, **fields), version=version, event_id=event_id)


def line_item(price_id: str, *, quantity: int = 1, unit_amount: int = 999, version: str = CURRENT) -> dict[str, Any]:
    """A Checkout session's line item (object `item`), as `GET /v1/checkout/sessions/{id}/line_items` lists it."""
    amount = unit_amount * quantity
    item: dict[str, Any] = {
        "id": unique("li"),
        "object": "item",
        "amount_discount": 0,
        "amount_subtotal": amount,
        "amount_tax": 0,
        "amount_total": amount,
        "currency": "usd",
        "description": price_id.removeprefix("price_").replace("_", " "),
        "price": price_object(price_id, unit_amount=unit_amount, recurring=False),
        "quantity": quantity,
    }
    if basil(version):
        item["adjustable_quantity"] = None
        item["metadata"] = None
    return item


# --- charges, refunds, disputes ----------------------------------------------------------------------------------


def charge(
    *,
    charge_id: str = "ch_1",
    payment_intent: str | None = "pi_1",
    customer: str = "cus_1",
    amount: int = 999,
    amount_refunded: int = 0,
    invoice: str | None = None,
    version: str = CURRENT,
) -> dict[str, Any]:
    """A charge. Before basil it names its invoice (`invoice`, null for a Checkout payment); since, not."""
    shape: dict[str, Any] = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": "txn_" + charge_id.removeprefix("ch_"),
        "billing_details": {"address": _NO_ADDRESS, "email": None, "name": "A Buyer", "phone": None},
        "calculated_statement_descriptor": "MOMENTS",
        "captured": True,
        "created": now_s() - 3600,
        "currency": "usd",
        "customer": customer,
        "description": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": True,
        "payment_intent": payment_intent,
        "payment_method": "pm_1",
        "payment_method_details": {"card": {"brand": "visa", "country": "US", "last4": "4242"}, "type": "card"},
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": f"https://pay.stripe.test/receipts/{charge_id}",
        "refunded": amount_refunded >= amount,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }
    if not basil(version):
        shape["invoice"] = invoice
    return shape


def charge_refunded_event(
    *, version: str = CURRENT, event_id: str | None = None, amount_refunded: int, **fields: Any
) -> dict[str, Any]:
    refunded = charge(version=version, amount_refunded=amount_refunded, **fields)
    return event(
        "charge.refunded",
        refunded,
        version=version,
        event_id=event_id,
        previous_attributes={"amount_refunded": 0, "refunded": False},
    )


def dispute(
    *,
    dispute_id: str = "dp_1",
    charge_id: str = "ch_1",
    payment_intent: str | None = "pi_1",
    status: str = "needs_response",
    amount: int = 999,
    version: str = CURRENT,
) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge_id,
        "created": now_s() - 60,
        "currency": "usd",
        "evidence": {"customer_name": None, "product_description": None, "uncategorized_text": None},
        "evidence_details": {
            "due_by": now_s() + 7 * 86_400,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": status.startswith("warning_"),
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "payment_method_details": {
            "card": {
                "brand": "visa",
                "case_type": "inquiry" if status.startswith("warning_") else "chargeback",
                "network_reason_code": "10.4",
            },
            "type": "card",
        },
        "reason": "fraudulent",
        "status": status,
    }
    if basil(version):
        shape["enhanced_eligibility_types"] = []
        shape["evidence"]["enhanced_evidence"] = {}
        shape["evidence_details"]["enhanced_eligibility"] = {}
        shape["payment_method_details"]["card"]["network"] = "visa"
    return shape


def dispute_event(
    event_type: str, *, version: str = CURRENT, event_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    return event(event_type, dispute(version=version, **fields), version=version, event_id=event_id)
