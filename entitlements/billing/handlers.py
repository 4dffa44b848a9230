"""What each Stripe event does: one handler per event type (`HANDLERS`, cosmicpython's handler registry).

A handler runs inside the event's transaction (`service.apply_event` opens it and marks the event ended
in it): it reads the stored state it needs under lock, DECIDES with a pure function of this module (or of
`clawbacks.py`, for refunds and disputes) over the event and that state (`subscription_update_refusal`,
`invoice_allowance`, `session_packs`, `refund_decision`, `refund_share`, `dispute_step`, `customer_owner`),
then performs the decision: ledger operations through `Ledger.execute_in` on the event's connection, and
billing's own rows. It answers an `Effect`, or declines (`effects.py` says how an event ends, and the
reference convention that ties its ledger transactions to it).

**Ordering.** Stripe does not deliver in order. A subscription event whose `created` is older than the
stored `subscriptions.stripe_event_created` does not win; on a tie (Stripe's clock has one-second
resolution) the state further along the subscription's lifecycle wins; an ended subscription never comes
back; an event about a subscription that is not the user's current one cannot take the tier away.
Money events that arrive before what they refer to (a refund before its purchase) wait, stored, and are
retried until it is there; a dispute's state only moves forwards (`clawbacks.dispute_step`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

import ledger
import pricing
from entitlements.billing import queries
from entitlements.billing.clawbacks import DISPUTE_EVENTS, apply_charge_refunded, apply_dispute
from entitlements.billing.effects import (
    ACTOR,
    Context,
    Effect,
    NeverApplicable,
    NotYetApplicable,
    convert,
    post,
    timestamp,
    user_for,
    valid_user_id,
    without_effect,
)
from entitlements.billing.events import (
    CheckoutSession,
    Customer,
    Invoice,
    InvoiceLine,
    InvoicePayment,
    Subscription,
    ref_id,
)
from entitlements.billing.gateway import LineItemsOf

# Statuses that give the subscription's tier. past_due keeps it while Stripe retries the payment:
# Stripe moves the subscription to unpaid or canceled when it gives up, and that drops the tier.
TIER_STATUSES = frozenset({"active", "trialing", "past_due"})
# A subscription in one of these never becomes active again (Stripe's terminal statuses).
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
# How far along its lifecycle a subscription is: on a `created` tie, the later stage wins.
LIFECYCLE_STAGE = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "paused": 3,
    "unpaid": 4,
    "canceled": 5,
    "incomplete_expired": 5,
}
# A Checkout session credits its packs once it is paid (or needed no payment: a 100% discount).
PAID_SESSION_STATUSES = frozenset({"paid", "no_payment_required"})
SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)
# The events that move moments: reconciliation lists every one of them beside its ledger transaction.
MONEY_EVENTS = (
    "invoice.paid",
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "charge.refunded",
    *DISPUTE_EVENTS,
)


# Customers -------------------------------------------------------------------------------------------


async def _apply_customer(context: Context) -> Effect:
    customer: Customer = convert(context.event, Customer)
    user_id = valid_user_id((customer.metadata or {}).get("user_id"), "metadata.user_id")
    if user_id is None:
        return without_effect("the customer has no metadata.user_id")
    await user_for(context.connection, customer.id, user_id)
    return Effect(f"customer {customer.id} belongs to {user_id}")


# Subscriptions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionState:
    """What a subscription event says (incoming) or what is stored for the user."""

    subscription_id: str | None
    status: str | None
    event_created: datetime | None
    # The stored tier was set by an admin (PUT /v1/users/{id}/subscription), not by Stripe.
    manual: bool = False


def subscription_update_refusal(stored: SubscriptionState, incoming: SubscriptionState) -> str | None:
    """Why an incoming subscription event must not overwrite the stored state, or None if it wins."""
    assert incoming.event_created is not None
    assert incoming.status is not None
    if stored.event_created is not None:
        if incoming.event_created < stored.event_created:
            return "older than the subscription state already stored"
        if (
            incoming.event_created == stored.event_created
            and stored.subscription_id == incoming.subscription_id
            and LIFECYCLE_STAGE.get(incoming.status, 0) < LIFECYCLE_STAGE.get(stored.status or "", 0)
        ):
            return "same second as the stored state, which is further along the subscription's lifecycle"
    if (
        stored.subscription_id == incoming.subscription_id
        and stored.status in ENDED_STATUSES
        and incoming.status not in ENDED_STATUSES
    ):
        return "this subscription already ended; an ended Stripe subscription never comes back"
    if (
        stored.subscription_id is not None
        and stored.subscription_id != incoming.subscription_id
        and stored.status in TIER_STATUSES
        and incoming.status not in TIER_STATUSES
    ):
        return f"{incoming.subscription_id} is not the user's current subscription and gives no tier"
    if stored.manual and stored.subscription_id != incoming.subscription_id and incoming.status not in TIER_STATUSES:
        return f"the tier was set by an admin; {incoming.subscription_id}, which gives none, does not take it away"
    return None


@dataclass(frozen=True)
class SubscriptionChange:
    """What a subscription event would store for its user, read from the event alone."""

    tier: pricing.TierName
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool


def subscription_change(event_type: str, subscription: Subscription, catalog: pricing.Catalog) -> SubscriptionChange:
    """The tier and Stripe state a subscription event sets; a tier-giving status whose price the catalog
    does not know waits (the catalog may learn it)."""
    # `deleted` ends the subscription now, whatever status the object carries.
    status = "canceled" if event_type == "customer.subscription.deleted" else subscription.status
    item = subscription.items.data[0] if subscription.items.data else None
    period_end = timestamp(subscription.current_period_end or (item.current_period_end if item else None))
    tier = pricing.FREE_TIER
    if status in TIER_STATUSES:
        if item is None:
            raise NotYetApplicable(f"subscription {subscription.id} has no items: no price to take the tier from")
        found = catalog.tier_by_price_id(item.price.id)
        if found is None:
            raise NotYetApplicable(f"price {item.price.id} is not a tier's stripe_price_id in pricing/catalog.toml")
        tier = found.name
    return SubscriptionChange(
        tier=tier,
        status=status,
        current_period_end=period_end,
        cancel_at_period_end=subscription.cancel_at_period_end and status not in ENDED_STATUSES,
    )


def _stored_subscription(row: asyncpg.Record) -> SubscriptionState:
    return SubscriptionState(
        row["stripe_subscription_id"],
        row["stripe_status"],
        row["stripe_event_created"],
        manual=row["source"] == "manual",
    )


async def _apply_subscription(context: Context) -> Effect:
    event = context.event
    subscription: Subscription = convert(event, Subscription)
    user_id = await user_for(
        context.connection, ref_id(subscription.customer), (subscription.metadata or {}).get("user_id")
    )
    change = subscription_change(event.type, subscription, context.catalog)
    values = (
        user_id,
        change.tier,
        subscription.id,
        change.status,
        change.current_period_end,
        change.cancel_at_period_end,
        event.created,
    )
    applied = Effect(f"{user_id} is {change.tier} (subscription {subscription.id} {change.status})")
    connection = context.connection
    stored = await connection.fetchrow(queries.SUBSCRIPTION_FOR_UPDATE, user_id)
    if stored is None:
        if await connection.fetchval(queries.INSERT_SUBSCRIPTION, *values):
            return applied
        # Another transaction created the row meanwhile: decide against it under its lock.
        stored = await connection.fetchrow(queries.SUBSCRIPTION_FOR_UPDATE, user_id)
        assert stored is not None
    refusal = subscription_update_refusal(
        _stored_subscription(stored), SubscriptionState(subscription.id, change.status, event.created)
    )
    if refusal is not None:
        return without_effect(refusal)
    await connection.execute(queries.UPDATE_SUBSCRIPTION, *values)
    return applied


# Invoices: the period's allowance --------------------------------------------------------------------


@dataclass(frozen=True)
class Allowance:
    """The moments a paid subscription invoice grants, as a lot that expires at the end of its period."""

    tier: pricing.Tier
    expires_at: datetime


def subscription_lines(invoice: Invoice) -> list[InvoiceLine]:
    """The lines that charge for a period of the subscription: with a price, not a proration (under
    either parent, or the pre-basil flag), not a one-off invoice item; the latest period first."""
    lines = [
        line
        for line in invoice.lines.data
        if line.price_id is not None and not line.is_proration and not line.is_invoice_item
    ]
    return sorted(lines, key=lambda line: line.period.end, reverse=True)


def invoice_allowance(invoice: Invoice, catalog: pricing.Catalog, now: datetime) -> Allowance | Effect:
    """The allowance a paid invoice grants, or the without-effect Effect of one that grants none."""
    if invoice.subscription_id is None:
        return without_effect("not a subscription invoice")
    lines = subscription_lines(invoice)
    if not lines:
        if any(line.is_proration for line in invoice.lines.data):
            return without_effect(
                f"invoice {invoice.id} has only proration lines: a change of plan grants nothing; "
                "the next period's invoice grants the new tier's allowance"
            )
        return without_effect(f"invoice {invoice.id} has no subscription line with a price: nothing to grant")
    tier = catalog.tier_by_price_id(lines[0].price_id or "")
    if tier is None:
        raise NotYetApplicable(f"price {lines[0].price_id} is not a tier's stripe_price_id in pricing/catalog.toml")
    if tier.monthly_allowance_moments == 0:
        return without_effect(f"tier {tier.name} has no allowance")
    expires_at = datetime.fromtimestamp(lines[0].period.end, UTC)
    if expires_at <= now:
        return without_effect(f"the period ended at {expires_at.isoformat()}; its allowance would expire at once")
    return Allowance(tier=tier, expires_at=expires_at)


async def _apply_invoice_paid(context: Context) -> Effect:
    event, connection = context.event, context.connection
    invoice: Invoice = convert(event, Invoice)
    # Before basil an invoice names its payment: refunds and disputes of that charge find the invoice.
    for payment in (ref_id(invoice.payment_intent), ref_id(invoice.charge)):
        if payment is not None:
            await connection.execute(queries.REMEMBER_INVOICE_PAYMENT, payment, invoice.id)
    allowance = invoice_allowance(invoice, context.catalog, context.now)
    if isinstance(allowance, Effect):
        await connection.execute(
            queries.INSERT_INVOICE,
            invoice.id,
            event.id,
            None,
            invoice.subscription_id,
            None,
            0,
            None,
            None,
            None,
            invoice.amount_paid,
        )
        return allowance
    tier, expires_at = allowance.tier, allowance.expires_at
    details = invoice.details
    user_id = await user_for(
        connection,
        ref_id(invoice.customer),
        (details.metadata or {}).get("user_id") if details is not None else None,
    )
    amount = tier.monthly_allowance_moments
    posted = await post(
        context,
        ledger.Credit(
            key=f"stripe:invoice:{invoice.id}",
            user_id=user_id,
            actor=ACTOR,
            reason=f"{tier.name} allowance, invoice {invoice.id}, until {expires_at.isoformat()}",
            reference=event.id,
            amount=amount,
            kind="subscription_grant",
            category="subscription",
            expires_at=expires_at,
        ),
    )
    if isinstance(posted, str):
        return without_effect(posted)
    await connection.execute(
        queries.INSERT_INVOICE,
        invoice.id,
        event.id,
        user_id,
        invoice.subscription_id,
        tier.name,
        amount,
        posted.lot_ids[0] if posted.lot_ids else None,
        expires_at,
        posted.transaction_id,
        invoice.amount_paid,
    )
    return Effect(
        f"granted {amount} {tier.name} moments to {user_id} until {expires_at.isoformat()}",
        "subscription_grant",
        amount,
    )


async def _apply_invoice_payment(context: Context) -> Effect:
    """invoice_payment.paid (since basil): which payment paid which invoice, for its refunds and disputes."""
    payment: InvoicePayment = convert(context.event, InvoicePayment)
    invoice_id = ref_id(payment.invoice)
    assert invoice_id is not None
    paid_by = [p for p in (ref_id(payment.payment.payment_intent), ref_id(payment.payment.charge)) if p is not None]
    if not paid_by:
        return without_effect(f"invoice payment {payment.id} names no payment intent or charge")
    for payment_id in paid_by:
        await context.connection.execute(queries.REMEMBER_INVOICE_PAYMENT, payment_id, invoice_id)
    return Effect(f"{' and '.join(paid_by)} paid invoice {invoice_id}")


# Checkout: moment packs --------------------------------------------------------------------------------

PackLine = tuple[str | None, int]


def session_packs(
    session: CheckoutSession, catalog: pricing.Catalog, line_items: Sequence[PackLine] | None
) -> list[tuple[pricing.Pack, int]]:
    """The packs a paid Checkout session bought, with their quantities (summed per pack): the metadata
    `pack` this service sets on its own sessions, else every line item's price (sessions made elsewhere:
    Payment Links, the dashboard). A pack or price the catalog does not know, or no line at all, waits."""
    pack_hint = (session.metadata or {}).get("pack")
    if pack_hint:
        pack = catalog.pack(pack_hint)
        if pack is None:
            raise NotYetApplicable(f"pack {pack_hint} is not in pricing/catalog.toml")
        return [(pack, 1)]
    if not line_items:
        raise NotYetApplicable(f"session {session.id} is paid but has no line item: it matches no moment pack")
    unknown = [price for price, _ in line_items if price is None or catalog.pack_by_price_id(price) is None]
    if unknown:
        raise NotYetApplicable(
            f"session {session.id} is paid but its price(s) {', '.join(map(str, unknown))} match no moment pack "
            "in pricing/catalog.toml"
        )
    # One entry per pack, however many lines sell it, in the order first sold.
    quantities: dict[str, int] = {}
    for price, quantity in line_items:
        quantities[price or ""] = quantities.get(price or "", 0) + quantity
    packs = [(catalog.pack_by_price_id(price), quantity) for price, quantity in quantities.items()]
    return [(pack, quantity) for pack, quantity in packs if pack is not None]


def _label(packs: Sequence[tuple[pricing.Pack, int]]) -> str:
    return ", ".join(pack.id if quantity == 1 else f"{pack.id} x{quantity}" for pack, quantity in packs)


async def _apply_checkout_completed(context: Context) -> Effect:
    event = context.event
    session: CheckoutSession = convert(event, CheckoutSession)
    user_hint = (session.metadata or {}).get("user_id") or session.client_reference_id
    customer_id = ref_id(session.customer)
    if session.mode != "payment":
        if customer_id is not None and valid_user_id(user_hint, "metadata.user_id") is not None:
            await user_for(context.connection, customer_id, user_hint)
        return without_effect(f"a {session.mode} checkout (a subscription's own events set the tier)")
    if session.payment_status not in PAID_SESSION_STATUSES:
        return without_effect(
            f"payment_status is {session.payment_status}; checkout.session.async_payment_succeeded credits it once paid"
        )
    line_items: Sequence[PackLine] | None = None
    if not (session.metadata or {}).get("pack"):
        # Webhooks never carry line items: a session made elsewhere is asked about (unless expanded whole).
        expanded = session.line_items
        line_items = (
            [(item.price.id if item.price else None, item.quantity) for item in expanded.data]
            if expanded is not None and not expanded.has_more
            else context.stripe(LineItemsOf(session.id))
        )
    packs = session_packs(session, context.catalog, line_items)
    moments = sum(pack.moments * quantity for pack, quantity in packs)
    if moments > ledger.AMOUNT_MOMENTS_MAX:
        raise NeverApplicable(f"session {session.id} would credit {moments} moments, more than any credit may")
    label = _label(packs)
    user_id = await user_for(context.connection, customer_id, user_hint)
    already = await context.connection.fetchval(queries.PURCHASE_EVENT_FOR_UPDATE, session.id)
    if already is not None:
        return without_effect(f"session {session.id} was already credited by event {already}")
    posted = await post(
        context,
        ledger.Credit(
            key=f"stripe:checkout:{session.id}",
            user_id=user_id,
            actor=ACTOR,
            reason=f"{label} bought through Checkout session {session.id}",
            reference=event.id,
            amount=moments,
            kind="purchase",
            category="paid",
        ),
    )
    if isinstance(posted, str):
        return without_effect(posted)
    assert posted.transaction_id is not None
    await context.connection.execute(
        queries.INSERT_PURCHASE,
        session.id,
        ref_id(session.payment_intent),
        user_id,
        label,
        moments,
        session.amount_total if session.amount_total is not None else sum(p.price_cents * q for p, q in packs),
        session.currency or packs[0][0].currency,
        posted.lot_ids[0] if posted.lot_ids else None,
        posted.transaction_id,
        event.id,
    )
    return Effect(f"credited {moments} paid moments ({label}) to {user_id}", "purchase", moments)


# The registry ----------------------------------------------------------------------------------------

Handler = Callable[[Context], Awaitable[Effect]]
HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(SUBSCRIPTION_EVENTS, _apply_subscription),
    "invoice.paid": _apply_invoice_paid,
    "invoice_payment.paid": _apply_invoice_payment,
    "checkout.session.completed": _apply_checkout_completed,
    "checkout.session.async_payment_succeeded": _apply_checkout_completed,
    "charge.refunded": apply_charge_refunded,
    **dict.fromkeys(DISPUTE_EVENTS, apply_dispute),
    "customer.created": _apply_customer,
    "customer.updated": _apply_customer,
}
