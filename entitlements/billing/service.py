"""Stripe: webhook events (stored first, then applied exactly once), customers, Checkout, reconciliation.

**Events.** A verified event is stored under its id (`stripe_events`, primary key) before anything else,
then applied in ONE database transaction that locks its row (`FOR UPDATE`), skips it if it is already
applied, performs its ledger operations through `Ledger.execute_in` on that same connection, updates
subscriptions and purchases, and marks it applied. A failure rolls all of it back and leaves the event
stored with `last_error`; the sweeper (and Stripe's redelivery) tries again. Ledger idempotency keys are
derived from Stripe object ids (`stripe:invoice:{id}`, `stripe:checkout:{id}`, …), so no re-application
of an event, nor a second event about the same object, can credit twice.

**Reference convention.** Every ledger transaction an event produces has `reference` = the Stripe
event id (`evt_…`), and the event row records the kind and moments it meant to post (`ledger_kind`,
`ledger_moments`). Reconciliation and the audit match the two on that reference.

**Ordering.** Stripe does not deliver in order. A subscription event whose `created` is older than the
stored `subscriptions.stripe_event_created` does not win; on a tie (Stripe's clock has one-second
resolution) the state further along the subscription's lifecycle wins; an ended subscription never comes
back; an event about a subscription that is not the user's current one cannot take the tier away.
Money events that arrive before what they refer to (a refund before its purchase) wait, stored, and are
retried until it is there.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
import stripe
import structlog
from stripe.params.checkout import SessionCreateParams

import ledger
import pricing
from entitlements import idempotency, tiers
from entitlements.billing.schemas import WebhookOut
from entitlements.errors import (
    InvalidSignature,
    StripeNotConfigured,
    StripeRefused,
    StripeUnavailable,
    TierRequired,
    Unavailable,
    ValidationFailed,
    one_of,
)
from entitlements.keys import Caller
from entitlements.schemas import Struct, is_user_id
from entitlements.settings import StripeSettings
from ledger import Connection

log = structlog.get_logger("moments.stripe")

ACTOR = "stripe:webhook"
# One outgoing Stripe call; the stripe library retries connection failures and 409/429/5xx this often
# (with the same idempotency key).
STRIPE_REQUEST_TIMEOUT_S = 20.0
STRIPE_NETWORK_RETRIES_MAX = 2
# Larger than the API's general body limit: invoices with many lines make large events, and a 413 would
# only make Stripe redeliver the same body until it gives up.
WEBHOOK_BODY_BYTES_MAX = 1 << 20
# The sweeper applies at most this many stored-but-unapplied events per pass, retrying each no sooner
# than base * 2^attempts seconds (capped) after its last failure.
REAPPLY_BATCH_MAX = 100
REAPPLY_BACKOFF_BASE_S = 5
REAPPLY_BACKOFF_CAP_S = 3600
LAST_ERROR_CHARS_MAX = 1000
# Reconciliation lists every event of its window; more than this is refused (ask for a narrower window).
RECONCILIATION_EVENTS_MAX = 10_000

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
# Dispute statuses that end it in the user's favour: the moments taken at its creation go back.
DISPUTE_WON = frozenset({"won", "warning_closed", "prevented"})
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
    "charge.dispute.created",
    "charge.dispute.closed",
)
# Ledger transaction kinds only Stripe events produce.
STRIPE_KINDS = ("purchase", "subscription_grant", "clawback", "clawback_reversal")
LedgerKind = Literal["purchase", "subscription_grant", "clawback", "clawback_reversal"]


# ---------------------------------------------------------------------------------------------------
# The parts of Stripe's objects this service reads. Unknown fields are ignored (Stripe adds fields in
# every API version); fields that moved between API versions are accepted in both places.


class _Stripe(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Ref(_Stripe, frozen=True, kw_only=True):
    """An expanded object where Stripe usually sends an id."""

    id: str


Expandable = str | Ref | None


def ref_id(value: Expandable) -> str | None:
    return value.id if isinstance(value, Ref) else value


class EventData(_Stripe, frozen=True, kw_only=True):
    object: dict[str, Any]


class Envelope(_Stripe, frozen=True, kw_only=True):
    id: str
    type: str
    created: int
    livemode: bool = False
    data: EventData


class Price(_Stripe, frozen=True, kw_only=True):
    id: str


class SubscriptionItem(_Stripe, frozen=True, kw_only=True):
    price: Price
    # Since API version 2025-03-31.basil the period lives on the item, not on the subscription.
    current_period_end: int | None = None


class SubscriptionItems(_Stripe, frozen=True, kw_only=True):
    data: list[SubscriptionItem] = []


class Subscription(_Stripe, frozen=True, kw_only=True):
    id: str
    customer: Expandable = None
    status: str
    items: SubscriptionItems = msgspec.field(default_factory=SubscriptionItems)
    current_period_end: int | None = None
    cancel_at_period_end: bool = False
    metadata: dict[str, str] | None = None


class LinePeriod(_Stripe, frozen=True, kw_only=True):
    start: int
    end: int


class PriceDetails(_Stripe, frozen=True, kw_only=True):
    price: str | Price


class LinePricing(_Stripe, frozen=True, kw_only=True):
    price_details: PriceDetails | None = None


class SubscriptionItemDetails(_Stripe, frozen=True, kw_only=True):
    proration: bool = False
    subscription: str | None = None


class LineParent(_Stripe, frozen=True, kw_only=True):
    subscription_item_details: SubscriptionItemDetails | None = None


class InvoiceLine(_Stripe, frozen=True, kw_only=True):
    period: LinePeriod
    price: Price | None = None  # before 2025-03-31.basil
    pricing: LinePricing | None = None  # since 2025-03-31.basil
    proration: bool = False  # before 2025-03-31.basil
    parent: LineParent | None = None  # since 2025-03-31.basil

    @property
    def price_id(self) -> str | None:
        if self.pricing is not None and self.pricing.price_details is not None:
            price = self.pricing.price_details.price
            return price.id if isinstance(price, Price) else price
        return self.price.id if self.price is not None else None

    @property
    def is_proration(self) -> bool:
        details = self.parent.subscription_item_details if self.parent is not None else None
        return self.proration or (details is not None and details.proration)


class InvoiceLines(_Stripe, frozen=True, kw_only=True):
    data: list[InvoiceLine] = []


class SubscriptionDetails(_Stripe, frozen=True, kw_only=True):
    subscription: Expandable = None
    metadata: dict[str, str] | None = None


class InvoiceParent(_Stripe, frozen=True, kw_only=True):
    subscription_details: SubscriptionDetails | None = None


class Invoice(_Stripe, frozen=True, kw_only=True):
    id: str
    customer: Expandable = None
    subscription: Expandable = None  # before 2025-03-31.basil; since then parent.subscription_details
    subscription_details: SubscriptionDetails | None = None  # before 2025-03-31.basil (its metadata)
    parent: InvoiceParent | None = None
    lines: InvoiceLines = msgspec.field(default_factory=InvoiceLines)

    @property
    def details(self) -> SubscriptionDetails | None:
        if self.parent is not None and self.parent.subscription_details is not None:
            return self.parent.subscription_details
        return self.subscription_details

    @property
    def subscription_id(self) -> str | None:
        details = self.details
        return ref_id(details.subscription if details is not None else None) or ref_id(self.subscription)


class LineItem(_Stripe, frozen=True, kw_only=True):
    price: Price | None = None


class LineItems(_Stripe, frozen=True, kw_only=True):
    data: list[LineItem] = []


class CheckoutSession(_Stripe, frozen=True, kw_only=True):
    id: str
    mode: str
    payment_status: str
    customer: Expandable = None
    client_reference_id: str | None = None
    metadata: dict[str, str] | None = None
    payment_intent: Expandable = None
    amount_total: int | None = None
    currency: str | None = None
    # Only present when the session was expanded; metadata `pack` is what this service sets.
    line_items: LineItems | None = None


class Charge(_Stripe, frozen=True, kw_only=True):
    id: str
    amount: int
    amount_refunded: int = 0
    payment_intent: Expandable = None
    invoice: Expandable = None  # before 2025-03-31.basil: set on the charges of subscription invoices


class Dispute(_Stripe, frozen=True, kw_only=True):
    id: str
    charge: str | Ref
    payment_intent: Expandable = None
    status: str


class Customer(_Stripe, frozen=True, kw_only=True):
    id: str
    metadata: dict[str, str] | None = None


# ---------------------------------------------------------------------------------------------------
# Applying events.


class NotYetApplicable(Exception):
    """The event cannot be applied now (its customer is unknown, its purchase not recorded yet, its price
    not in the catalog, its object malformed). It stays stored, unapplied, with this as `last_error`;
    the sweeper retries it and reconciliation reports it."""


@dataclass(frozen=True)
class Effect:
    """What applying an event did: its outcome for people, and the ledger transaction it posted (if any)."""

    outcome: str
    ledger_kind: LedgerKind | None = None
    ledger_moments: int | None = None
    ignored: bool = False


def ignored(reason: str) -> Effect:
    """The event is applied by doing nothing (it is marked applied, and never tried again)."""
    return Effect(f"ignored: {reason}", ignored=True)


ApplyStatus = Literal["applied", "ignored", "duplicate", "pending", "failed"]


@dataclass(frozen=True)
class ApplyResult:
    status: ApplyStatus
    detail: str | None


@dataclass(frozen=True)
class StoredEvent:
    id: str
    type: str
    created: datetime
    object: dict[str, Any]


@dataclass(frozen=True)
class _Context:
    connection: Connection
    ledger: ledger.Ledger
    catalog: pricing.Catalog
    event: StoredEvent
    now: datetime


def _convert(event: StoredEvent, model: type[Any]) -> Any:
    try:
        return msgspec.convert(event.object, model)
    except msgspec.ValidationError as invalid:
        raise NotYetApplicable(f"{event.type}: unexpected object shape: {invalid}") from None


def _valid_user_id(value: str | None, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not is_user_id(value):
        raise NotYetApplicable(f"{source} {value!r} is not a valid user id")
    return value


async def _user_for(connection: Connection, customer_id: str | None, metadata_user_id: str | None) -> str:
    """The user an object belongs to: its customer's mapping, else the object's metadata user_id (which
    this service sets on every customer, session and subscription it creates)."""
    from_metadata = _valid_user_id(metadata_user_id, "metadata.user_id")
    mapped: str | None = None
    if customer_id is not None:
        mapped = await connection.fetchval("SELECT user_id FROM stripe_customers WHERE customer_id = $1", customer_id)
    if mapped is not None and from_metadata is not None and mapped != from_metadata:
        raise NotYetApplicable(
            f"customer {customer_id} belongs to {mapped!r} but the object's metadata names {from_metadata!r}"
        )
    user_id = mapped or from_metadata
    if user_id is None:
        raise NotYetApplicable(f"unknown customer {customer_id}: no stripe_customers row and no metadata.user_id")
    if mapped is None and customer_id is not None:
        await _remember_customer(connection, customer_id, user_id)
    return user_id


async def _remember_customer(connection: Connection | asyncpg.Pool, customer_id: str, user_id: str) -> None:
    await connection.execute(
        "INSERT INTO stripe_customers (customer_id, user_id) VALUES ($1, $2) ON CONFLICT (customer_id) DO NOTHING",
        customer_id,
        user_id,
    )


def _timestamp(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


async def _post(context: _Context, operation: ledger.AnyOperation) -> ledger.Result | str:
    """One ledger operation inside the event's transaction. A str answer means another event already
    performed it (same key, another reference): nothing new was written."""
    (outcome,) = await context.ledger.execute_in(context.connection, [operation], now=context.now)
    if isinstance(outcome, ledger.IdempotencyConflict):
        earlier = await context.connection.fetchval(
            "SELECT reference FROM ledger_transactions WHERE idempotency_key = $1", operation.key
        )
        return f"already applied by Stripe event {earlier}"
    if isinstance(outcome, ledger.LedgerRuleError):
        # Credits and clawbacks are never refused for the user's state; a refusal here is a bug or a
        # payload the rules reject, and the event must not be marked applied.
        raise RuntimeError(f"the ledger refused {operation.key}: {outcome}")
    return outcome


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


async def _apply_subscription(context: _Context) -> Effect:
    event = context.event
    subscription: Subscription = _convert(event, Subscription)
    user_id = await _user_for(
        context.connection, ref_id(subscription.customer), (subscription.metadata or {}).get("user_id")
    )
    # `deleted` ends the subscription now, whatever status the object carries.
    status = "canceled" if event.type == "customer.subscription.deleted" else subscription.status
    item = subscription.items.data[0] if subscription.items.data else None
    period_end = _timestamp(subscription.current_period_end or (item.current_period_end if item else None))
    tier = pricing.FREE_TIER
    if status in TIER_STATUSES:
        if item is None:
            raise NotYetApplicable(f"subscription {subscription.id} has no items: no price to take the tier from")
        found = context.catalog.tier_by_price_id(item.price.id)
        if found is None:
            raise NotYetApplicable(f"price {item.price.id} is not a tier's stripe_price_id in pricing/catalog.toml")
        tier = found.name
    incoming = SubscriptionState(subscription.id, status, event.created)
    values = (
        user_id,
        tier,
        subscription.id,
        status,
        period_end,
        subscription.cancel_at_period_end and status not in ENDED_STATUSES,
        event.created,
    )
    connection = context.connection
    stored = await connection.fetchrow(
        "SELECT source, stripe_subscription_id, stripe_status, stripe_event_created FROM subscriptions "
        "WHERE user_id = $1 FOR UPDATE",
        user_id,
    )
    if stored is None:
        inserted = await connection.fetchval(
            """
            INSERT INTO subscriptions (user_id, tier, source, stripe_subscription_id, stripe_status,
                                       current_period_end, cancel_at_period_end, stripe_event_created)
            VALUES ($1, $2, 'stripe', $3, $4, $5, $6, $7)
            ON CONFLICT (user_id) DO NOTHING RETURNING true
            """,
            *values,
        )
        if inserted:
            return Effect(f"{user_id} is {tier} (subscription {subscription.id} {status})")
        # Another transaction created the row meanwhile: decide against it under its lock.
        stored = await connection.fetchrow(
            "SELECT source, stripe_subscription_id, stripe_status, stripe_event_created FROM subscriptions "
            "WHERE user_id = $1 FOR UPDATE",
            user_id,
        )
        assert stored is not None
    refusal = subscription_update_refusal(
        SubscriptionState(
            stored["stripe_subscription_id"],
            stored["stripe_status"],
            stored["stripe_event_created"],
            manual=stored["source"] == "manual",
        ),
        incoming,
    )
    if refusal is not None:
        return ignored(refusal)
    await connection.execute(
        """
        UPDATE subscriptions
        SET tier = $2, source = 'stripe', stripe_subscription_id = $3, stripe_status = $4, current_period_end = $5,
            cancel_at_period_end = $6, stripe_event_created = $7, updated_at = now()
        WHERE user_id = $1
        """,
        *values,
    )
    return Effect(f"{user_id} is {tier} (subscription {subscription.id} {status})")


# Invoices: the period's allowance --------------------------------------------------------------------


async def _apply_invoice_paid(context: _Context) -> Effect:
    event = context.event
    invoice: Invoice = _convert(event, Invoice)
    if invoice.subscription_id is None:
        return ignored("not a subscription invoice")
    # The subscription's own line (not a proration) with the latest period: the period being paid for.
    lines = sorted(
        (line for line in invoice.lines.data if line.price_id is not None and not line.is_proration),
        key=lambda line: line.period.end,
        reverse=True,
    )
    if not lines:
        raise NotYetApplicable(f"invoice {invoice.id} has no subscription line with a price")
    tier = context.catalog.tier_by_price_id(lines[0].price_id or "")
    if tier is None:
        raise NotYetApplicable(f"price {lines[0].price_id} is not a tier's stripe_price_id in pricing/catalog.toml")
    if tier.monthly_allowance_moments == 0:
        return ignored(f"tier {tier.name} has no allowance")
    expires_at = datetime.fromtimestamp(lines[0].period.end, UTC)
    if expires_at <= context.now:
        return ignored(f"the period ended at {expires_at.isoformat()}; its allowance would expire at once")
    details = invoice.details
    user_id = await _user_for(
        context.connection,
        ref_id(invoice.customer),
        (details.metadata or {}).get("user_id") if details is not None else None,
    )
    amount = tier.monthly_allowance_moments
    posted = await _post(
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
        return ignored(posted)
    return Effect(
        f"granted {amount} {tier.name} moments to {user_id} until {expires_at.isoformat()}",
        "subscription_grant",
        amount,
    )


# Checkout: moment packs --------------------------------------------------------------------------------


async def _apply_checkout_completed(context: _Context) -> Effect:
    event = context.event
    session: CheckoutSession = _convert(event, CheckoutSession)
    metadata = session.metadata or {}
    user_hint = metadata.get("user_id") or session.client_reference_id
    customer_id = ref_id(session.customer)
    if session.mode != "payment":
        if customer_id is not None and _valid_user_id(user_hint, "metadata.user_id") is not None:
            await _user_for(context.connection, customer_id, user_hint)
        return ignored(f"a {session.mode} checkout (a subscription's own events set the tier)")
    pack_hint = metadata.get("pack")
    price_ids = [item.price.id for item in (session.line_items.data if session.line_items else []) if item.price]
    pack = context.catalog.pack(pack_hint) if pack_hint else None
    if pack is None and not pack_hint:
        pack = next((p for p in map(context.catalog.pack_by_price_id, price_ids) if p is not None), None)
    if pack is None:
        if pack_hint or price_ids:
            raise NotYetApplicable(f"pack {pack_hint or price_ids} is not in pricing/catalog.toml")
        return ignored("names no moment pack (metadata.pack or a line's price)")
    if session.payment_status != "paid":
        return ignored(
            f"payment_status is {session.payment_status}; checkout.session.async_payment_succeeded credits it once paid"
        )
    user_id = await _user_for(context.connection, customer_id, user_hint)
    already = await context.connection.fetchval(
        "SELECT event_id FROM stripe_purchases WHERE checkout_session_id = $1 FOR UPDATE", session.id
    )
    if already is not None:
        return ignored(f"session {session.id} was already credited by event {already}")
    posted = await _post(
        context,
        ledger.Credit(
            key=f"stripe:checkout:{session.id}",
            user_id=user_id,
            actor=ACTOR,
            reason=f"{pack.id} bought through Checkout session {session.id}",
            reference=event.id,
            amount=pack.moments,
            kind="purchase",
            category="paid",
        ),
    )
    if isinstance(posted, str):
        return ignored(posted)
    assert posted.transaction_id is not None
    await context.connection.execute(
        """
        INSERT INTO stripe_purchases (checkout_session_id, payment_intent_id, user_id, pack_id, moments,
                                      amount_paid, currency, lot_id, transaction_id, event_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        session.id,
        ref_id(session.payment_intent),
        user_id,
        pack.id,
        pack.moments,
        session.amount_total if session.amount_total is not None else pack.price_cents,
        session.currency or pack.currency,
        posted.lot_ids[0] if posted.lot_ids else None,
        posted.transaction_id,
        event.id,
    )
    return Effect(f"credited {pack.moments} paid moments ({pack.id}) to {user_id}", "purchase", pack.moments)


# Refunds and disputes: clawbacks -----------------------------------------------------------------------


async def _purchase_for(connection: Connection, charge_id: str, payment_intent_id: str | None) -> asyncpg.Record | None:
    row = await connection.fetchrow(
        """
        SELECT * FROM stripe_purchases
        WHERE charge_id = $1 OR ($2::text IS NOT NULL AND payment_intent_id = $2)
        ORDER BY created_at LIMIT 1
        FOR UPDATE
        """,
        charge_id,
        payment_intent_id,
    )
    if row is not None and row["charge_id"] is None:
        await connection.execute(
            "UPDATE stripe_purchases SET charge_id = $2 WHERE checkout_session_id = $1",
            row["checkout_session_id"],
            charge_id,
        )
    return row


def _no_purchase(charge_id: str, payment_intent_id: str | None) -> NotYetApplicable:
    return NotYetApplicable(
        f"no moment-pack purchase recorded for charge {charge_id} (payment_intent {payment_intent_id}) yet"
    )


def refund_moments(moments: int, amount_refunded: int, amount: int) -> int:
    """The moments a cumulative refund takes back: proportional, rounded down (so the user is never
    charged moments for money not refunded), and exactly all of them for a full refund."""
    if amount <= 0:
        return moments if amount_refunded > 0 else 0
    return moments * min(amount_refunded, amount) // amount


async def _clawback(
    context: _Context, *, key: str, user_id: str, amount: int, lot_id: int | None, reason: str
) -> str | None:
    posted = await _post(
        context,
        ledger.Clawback(
            key=key,
            user_id=user_id,
            actor=ACTOR,
            reason=reason,
            reference=context.event.id,
            amount=amount,
            lot_id=lot_id,
        ),
    )
    return posted if isinstance(posted, str) else None


async def _apply_charge_refunded(context: _Context) -> Effect:
    charge: Charge = _convert(context.event, Charge)
    payment_intent_id = ref_id(charge.payment_intent)
    purchase = await _purchase_for(context.connection, charge.id, payment_intent_id)
    if purchase is None:
        if charge.invoice is not None:
            return ignored("a charge of an invoice (subscription), not of a moment pack")
        raise _no_purchase(charge.id, payment_intent_id)
    moments = purchase["moments"]
    target = refund_moments(moments, charge.amount_refunded, charge.amount or purchase["amount_paid"])
    wanted = target - purchase["refund_moments"]
    amount_refunded = max(charge.amount_refunded, purchase["amount_refunded"])
    if wanted <= 0:
        await context.connection.execute(
            "UPDATE stripe_purchases SET amount_refunded = $2 WHERE checkout_session_id = $1",
            purchase["checkout_session_id"],
            amount_refunded,
        )
        return ignored(f"refunds up to {charge.amount_refunded} were already clawed back")
    remaining = moments - purchase["refund_moments"] - purchase["dispute_moments"]
    taken = min(wanted, remaining)
    # An open dispute may already hold these moments back: they now count as refunded, so winning the
    # dispute later does not give back what the refund returned to the card.
    shifted = await _shift_from_open_disputes(context.connection, purchase["checkout_session_id"], wanted - taken)
    effect = Effect(f"refund of {charge.amount_refunded}: nothing left to claw back")
    if taken > 0:
        already = await _clawback(
            context,
            key=f"stripe:refund:{charge.id}:{charge.amount_refunded}",
            user_id=purchase["user_id"],
            amount=taken,
            lot_id=purchase["lot_id"],
            reason=f"refund of {charge.amount_refunded}/{charge.amount} of {purchase['pack_id']} (charge {charge.id})",
        )
        effect = (
            ignored(already)
            if already
            else Effect(
                f"clawed back {taken} moments of {purchase['pack_id']} from {purchase['user_id']}", "clawback", taken
            )
        )
    await context.connection.execute(
        """
        UPDATE stripe_purchases
        SET amount_refunded = $2, refund_moments = refund_moments + $3, dispute_moments = dispute_moments - $4
        WHERE checkout_session_id = $1
        """,
        purchase["checkout_session_id"],
        amount_refunded,
        taken + shifted,
        shifted,
    )
    return effect


async def _shift_from_open_disputes(connection: Connection, session_id: str, moments: int) -> int:
    shifted = 0
    if moments <= 0:
        return 0
    rows = await connection.fetch(
        "SELECT dispute_id, moments FROM stripe_disputes WHERE checkout_session_id = $1 AND status = 'open' "
        "AND moments > 0 ORDER BY dispute_id FOR UPDATE",
        session_id,
    )
    for row in rows:
        take = min(row["moments"], moments - shifted)
        if take <= 0:
            break
        await connection.execute(
            "UPDATE stripe_disputes SET moments = moments - $2, updated_at = now() WHERE dispute_id = $1",
            row["dispute_id"],
            take,
        )
        shifted += take
    return shifted


async def _dispute_clawback(context: _Context, dispute: Dispute, purchase: asyncpg.Record, status: str) -> Effect:
    remaining = purchase["moments"] - purchase["refund_moments"] - purchase["dispute_moments"]
    await context.connection.execute(
        "INSERT INTO stripe_disputes (dispute_id, checkout_session_id, moments, status) VALUES ($1, $2, $3, $4)",
        dispute.id,
        purchase["checkout_session_id"],
        max(remaining, 0),
        status,
    )
    if remaining <= 0:
        return Effect(f"dispute {dispute.id}: nothing left of {purchase['pack_id']} to claw back")
    await context.connection.execute(
        "UPDATE stripe_purchases SET dispute_moments = dispute_moments + $2 WHERE checkout_session_id = $1",
        purchase["checkout_session_id"],
        remaining,
    )
    already = await _clawback(
        context,
        key=f"stripe:dispute:{dispute.id}",
        user_id=purchase["user_id"],
        amount=remaining,
        lot_id=purchase["lot_id"],
        reason=f"dispute {dispute.id} of {purchase['pack_id']} (charge {ref_id(dispute.charge)})",
    )
    if already:
        return ignored(already)
    return Effect(
        f"dispute {dispute.id}: clawed back {remaining} moments of {purchase['pack_id']} from {purchase['user_id']}",
        "clawback",
        remaining,
    )


async def _dispute_and_purchase(context: _Context) -> tuple[Dispute, asyncpg.Record, asyncpg.Record | None]:
    dispute: Dispute = _convert(context.event, Dispute)
    charge_id = ref_id(dispute.charge) or ""
    payment_intent_id = ref_id(dispute.payment_intent)
    purchase = await _purchase_for(context.connection, charge_id, payment_intent_id)
    if purchase is None:
        raise _no_purchase(charge_id, payment_intent_id)
    recorded = await context.connection.fetchrow(
        "SELECT status, moments FROM stripe_disputes WHERE dispute_id = $1 FOR UPDATE", dispute.id
    )
    return dispute, purchase, recorded


async def _apply_dispute_created(context: _Context) -> Effect:
    dispute, purchase, recorded = await _dispute_and_purchase(context)
    if recorded is not None:
        return ignored(f"dispute {dispute.id} is already recorded ({recorded['status']})")
    return await _dispute_clawback(context, dispute, purchase, "open")


async def _apply_dispute_closed(context: _Context) -> Effect:
    dispute, purchase, recorded = await _dispute_and_purchase(context)
    won = dispute.status in DISPUTE_WON
    if not won and dispute.status != "lost":
        return ignored(f"dispute closed as {dispute.status}")
    if recorded is None:
        # The closing arrived before the opening was applied: a lost dispute takes back what the opening
        # would have; a won one took nothing. The opening, when it comes, finds this row and does nothing.
        if won:
            await context.connection.execute(
                "INSERT INTO stripe_disputes (dispute_id, checkout_session_id, moments, status) "
                "VALUES ($1, $2, 0, 'won')",
                dispute.id,
                purchase["checkout_session_id"],
            )
            return Effect(f"dispute {dispute.id} won before its opening was applied: nothing was taken")
        return await _dispute_clawback(context, dispute, purchase, "lost")
    if recorded["status"] != "open":
        return ignored(f"dispute {dispute.id} already closed as {recorded['status']}")
    await context.connection.execute(
        "UPDATE stripe_disputes SET status = $2, updated_at = now() WHERE dispute_id = $1",
        dispute.id,
        "won" if won else "lost",
    )
    if not won:
        return Effect(f"dispute {dispute.id} lost: the clawback of {recorded['moments']} moments stands")
    moments = recorded["moments"]
    if moments == 0:
        return Effect(f"dispute {dispute.id} won: nothing had been taken")
    posted = await _post(
        context,
        ledger.Credit(
            key=f"stripe:dispute:{dispute.id}:won",
            user_id=purchase["user_id"],
            actor=ACTOR,
            reason=f"dispute {dispute.id} of {purchase['pack_id']} won: the clawback is reversed",
            reference=context.event.id,
            amount=moments,
            kind="clawback_reversal",
            category="paid",
        ),
    )
    if isinstance(posted, str):
        return ignored(posted)
    # The reversal's lot now holds the purchase's moments: a later refund takes from it first.
    await context.connection.execute(
        "UPDATE stripe_purchases SET dispute_moments = dispute_moments - $2, lot_id = coalesce($3, lot_id) "
        "WHERE checkout_session_id = $1",
        purchase["checkout_session_id"],
        moments,
        posted.lot_ids[0] if posted.lot_ids else None,
    )
    return Effect(
        f"dispute {dispute.id} won: gave back {moments} moments to {purchase['user_id']}", "clawback_reversal", moments
    )


async def _apply_customer(context: _Context) -> Effect:
    customer: Customer = _convert(context.event, Customer)
    user_id = _valid_user_id((customer.metadata or {}).get("user_id"), "metadata.user_id")
    if user_id is None:
        return ignored("the customer has no metadata.user_id")
    await _user_for(context.connection, customer.id, user_id)
    return Effect(f"customer {customer.id} belongs to {user_id}")


Handler = Callable[[_Context], Awaitable[Effect]]
HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(SUBSCRIPTION_EVENTS, _apply_subscription),
    "invoice.paid": _apply_invoice_paid,
    "checkout.session.completed": _apply_checkout_completed,
    "checkout.session.async_payment_succeeded": _apply_checkout_completed,
    "charge.refunded": _apply_charge_refunded,
    "charge.dispute.created": _apply_dispute_created,
    "charge.dispute.closed": _apply_dispute_closed,
    "customer.created": _apply_customer,
    "customer.updated": _apply_customer,
}


# ---------------------------------------------------------------------------------------------------
# Storing and applying.

_envelope_decoder = msgspec.json.Decoder(Envelope)


class InvalidEvent(ValueError):
    """A correctly signed body that is not a Stripe event."""


def parse_envelope(payload: bytes) -> Envelope:
    try:
        return _envelope_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as invalid:
        raise InvalidEvent(str(invalid)) from None


async def store_event(pool: asyncpg.Pool, envelope: Envelope, payload: bytes) -> bool:
    """Stores the event under its id; False if it was already stored (a duplicate delivery)."""
    inserted = await pool.fetchval(
        """
        INSERT INTO stripe_events (id, type, created, livemode, payload) VALUES ($1, $2, $3, $4, $5::jsonb)
        ON CONFLICT (id) DO NOTHING RETURNING true
        """,
        envelope.id,
        envelope.type,
        datetime.fromtimestamp(envelope.created, UTC),
        envelope.livemode,
        payload.decode(),
    )
    return bool(inserted)


async def apply_event(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    event_id: str,
    *,
    skip_locked: bool = False,
) -> ApplyResult:
    """Applies one stored event in one transaction; never half. `skip_locked` (the sweeper) leaves an
    event another process is applying right now to that process."""
    lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
    try:
        async with pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"SELECT type, created, payload, applied_at, outcome FROM stripe_events WHERE id = $1 {lock}",
                event_id,
            )
            if row is None:
                return ApplyResult("duplicate", "being applied by another process")
            if row["applied_at"] is not None:
                return ApplyResult("duplicate", row["outcome"])
            payload = msgspec.json.decode(row["payload"])
            event = StoredEvent(event_id, row["type"], row["created"], payload.get("data", {}).get("object", {}))
            handler = HANDLERS.get(event.type)
            effect = (
                await handler(_Context(connection, ledger_service, catalog, event, datetime.now(UTC)))
                if handler is not None
                else ignored("not an event type this service applies")
            )
            await connection.execute(
                """
                UPDATE stripe_events
                SET applied_at = now(), attempts = attempts + 1, last_error = NULL, next_attempt_at = now(),
                    outcome = $2, ledger_kind = $3, ledger_moments = $4
                WHERE id = $1
                """,
                event_id,
                effect.outcome,
                effect.ledger_kind,
                effect.ledger_moments,
            )
    except NotYetApplicable as waiting:
        await _record_failure(pool, event_id, str(waiting))
        log.info("stripe_event_pending", event_id=event_id, reason=str(waiting))
        return ApplyResult("pending", str(waiting))
    except Exception as error:  # whatever failed, the event stays stored, unapplied, and is retried
        log.exception("stripe_event_failed", event_id=event_id, error_type=type(error).__name__)
        await _record_failure(pool, event_id, f"{type(error).__name__}: {error}")
        return ApplyResult("failed", type(error).__name__)
    status: ApplyStatus = "ignored" if effect.ignored else "applied"
    log.info("stripe_event_applied", event_id=event_id, event_type=event.type, status=status, outcome=effect.outcome)
    return ApplyResult(status, effect.outcome)


async def _record_failure(pool: asyncpg.Pool, event_id: str, error: str) -> None:
    try:
        await pool.execute(
            """
            UPDATE stripe_events
            SET attempts = attempts + 1, last_error = $2,
                next_attempt_at = now() + make_interval(secs => least($3, $4 * power(2, least(attempts, 20))))
            WHERE id = $1 AND applied_at IS NULL
            """,
            event_id,
            error[:LAST_ERROR_CHARS_MAX],
            float(REAPPLY_BACKOFF_CAP_S),
            float(REAPPLY_BACKOFF_BASE_S),
        )
    except (OSError, asyncpg.PostgresError) as unrecorded:
        # The event is still stored and unapplied; the sweeper will find it without the note.
        log.warning("stripe_event_failure_unrecorded", event_id=event_id, error=repr(unrecorded))


@functools.cache
def _default_catalog() -> pricing.Catalog:
    return pricing.load_catalog()


async def reapply_pending_events(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog | None = None,
    *,
    events_max: int = REAPPLY_BATCH_MAX,
) -> int:
    """The sweeper's pass over stored-but-unapplied events whose retry time has come (oldest Stripe time
    first, so a purchase is applied before its refund). Returns how many were applied now."""
    rows = await pool.fetch(
        "SELECT id FROM stripe_events WHERE applied_at IS NULL AND next_attempt_at <= now() "
        "ORDER BY created, id LIMIT $1",
        events_max,
    )
    applied = 0
    for row in rows:
        result = await apply_event(pool, ledger_service, catalog or _default_catalog(), row["id"], skip_locked=True)
        applied += result.status in {"applied", "ignored"}
    return applied


# ---------------------------------------------------------------------------------------------------
# Outgoing calls: customers and Checkout sessions.


class _HTTPXClient(stripe.HTTPXClient):
    """stripe's httpx client sends its form-encoded body as `data=`, which httpx deprecates for raw
    bytes; the same body as `content=` is the same request without the warning."""

    def _get_request_args_kwargs(self, *args: Any, **kwargs: Any) -> Any:
        positional, options = super()._get_request_args_kwargs(*args, **kwargs)
        if isinstance(options.get("data"), bytes | str):
            options["content"] = options.pop("data")
        return positional, options


@dataclass(frozen=True)
class StripeGateway:
    """The configured Stripe client and its HTTP client (closed with the app)."""

    client: stripe.StripeClient
    http_client: stripe.HTTPXClient

    async def aclose(self) -> None:
        await self.http_client.close_async()  # type: ignore[no-untyped-call]


def make_gateway(settings: StripeSettings) -> StripeGateway | None:
    """None when STRIPE_API_KEY is unset: checkout endpoints then answer 503 stripe_not_configured."""
    if settings.api_key is None:
        return None
    http_client = _HTTPXClient(timeout=STRIPE_REQUEST_TIMEOUT_S)
    client = stripe.StripeClient(
        settings.api_key,
        base_addresses={"api": settings.api_base} if settings.api_base else None,
        http_client=http_client,
        max_network_retries=STRIPE_NETWORK_RETRIES_MAX,
    )
    return StripeGateway(client, http_client)


class CheckoutCreate(Struct, frozen=True):
    pack: str | None = None
    tier: str | None = None


class CheckoutOut(Struct, frozen=True):
    url: str
    id: str


def stripe_idempotency_key(*parts: str) -> str:
    """Stripe keys are at most 255 characters: a digest of what identifies the request."""
    return "moments-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _stripe_problem(error: stripe.StripeError) -> StripeUnavailable | StripeRefused:
    if isinstance(error, stripe.APIConnectionError):
        return StripeUnavailable("Stripe did not answer; retry with the same Idempotency-Key")
    return StripeRefused(f"Stripe refused the request ({type(error).__name__}: {error.user_message or 'no detail'})")


async def _customer_for(pool: asyncpg.Pool, gateway: StripeGateway, user_id: str) -> str:
    existing = await pool.fetchval(
        "SELECT customer_id FROM stripe_customers WHERE user_id = $1 ORDER BY created_at LIMIT 1", user_id
    )
    if existing is not None:
        return str(existing)
    # One key per user: concurrent first checkouts of one user get the same Stripe customer.
    customer = await gateway.client.v1.customers.create_async(
        {"metadata": {"user_id": user_id}},
        {"idempotency_key": stripe_idempotency_key("customer", user_id)},
    )
    # Committed on its own: even if the checkout fails after this, the mapping is kept.
    await _remember_customer(pool, customer.id, user_id)
    return customer.id


async def create_checkout_session(
    *,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    settings: StripeSettings,
    catalog: pricing.Catalog,
    caller: Caller,
    user_id: str,
    pack: pricing.Pack | None,
    tier: pricing.Tier | None,
    key: str,
) -> CheckoutOut:
    """Creates (if needed) the user's Stripe customer and a Checkout session for a pack or a tier.

    The API idempotency claim is held in a transaction across the Stripe calls, so concurrent requests
    with one key wait and replay the first answer; the Stripe calls carry keys derived from the caller's,
    so a retry after a failure gets the same customer and session from Stripe."""
    assert (pack is None) != (tier is None)
    fingerprint = idempotency.request_hash("create_checkout_session", user_id, pack and pack.id, tier and tier.name)
    async with pool.acquire() as connection, connection.transaction():
        stored = await idempotency.claim(
            connection,
            caller_key_id=caller.key_id,
            key=key,
            operation="create_checkout_session",
            fingerprint=fingerprint,
            answer=CheckoutOut,
        )
        if stored is not None:
            return stored
        if pack is not None:
            current = await tiers.tier_of(connection, user_id)
            if current == pricing.FREE_TIER or catalog.tier(current) is None:
                raise TierRequired(f"moment packs need a PREMIUM or ULTIMATE tier; {user_id} is {current}")
        metadata = {"user_id": user_id, **({"pack": pack.id} if pack else {}), **({"tier": tier.name} if tier else {})}
        price_id = pack.stripe_price_id if pack is not None else tier.stripe_price_id if tier is not None else None
        assert price_id is not None
        try:
            customer_id = await _customer_for(pool, gateway, user_id)
            options: stripe.RequestOptions = {
                "idempotency_key": stripe_idempotency_key("checkout", str(caller.key_id), user_id, key)
            }
            params: SessionCreateParams = {
                "customer": customer_id,
                "client_reference_id": user_id,
                "line_items": [{"price": price_id, "quantity": 1}],
                "metadata": metadata,
                "success_url": settings.success_url,
                "cancel_url": settings.cancel_url,
            }
            # The metadata rides along on what the session creates, so later events name the user too.
            if pack is not None:
                params["mode"] = "payment"
                params["payment_intent_data"] = {"metadata": metadata}
            else:
                params["mode"] = "subscription"
                params["subscription_data"] = {"metadata": metadata}
            session = await gateway.client.v1.checkout.sessions.create_async(params, options)
        except stripe.StripeError as error:
            log.warning("stripe_call_failed", error_type=type(error).__name__, user_id=user_id)
            raise _stripe_problem(error) from None
        if not session.url:
            raise StripeRefused(f"Stripe answered checkout session {session.id} without a url")
        response = CheckoutOut(url=session.url, id=session.id)
        await idempotency.store(connection, caller_key_id=caller.key_id, key=key, answer=response)
    log.info(
        "checkout_session_created",
        user_id=user_id,
        session_id=session.id,
        pack=pack and pack.id,
        tier=tier and tier.name,
    )
    return response


# ---------------------------------------------------------------------------------------------------
# Reconciliation and audit.

# The moments a ledger transaction `t` moved: its one posting on a system account (a credit's source, a
# clawback's destination), as a positive number.
_TRANSACTION_MOMENTS = """
    CROSS JOIN LATERAL (
        SELECT abs(sum(p.amount))::bigint AS moments
        FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id
        WHERE p.transaction_id = t.id AND a.kind = 'system'
    ) m
"""

AUDIT_CHECKS: tuple[ledger.ExtraCheck, ...] = (
    (
        "stripe_events_have_their_transactions",
        "every applied Stripe event that moved moments has exactly one ledger transaction referencing it, "
        "of the kind and amount it recorded",
        f"""
        SELECT e.id, e.ledger_kind, e.ledger_moments, t.transactions, t.kinds, t.moments
        FROM stripe_events e
        LEFT JOIN LATERAL (
            SELECT count(*) AS transactions, array_agg(t.kind) AS kinds, sum(m.moments) AS moments
            FROM ledger_transactions t {_TRANSACTION_MOMENTS} WHERE t.reference = e.id
        ) t ON true
        WHERE e.ledger_kind IS NOT NULL
          AND (t.transactions <> 1 OR t.kinds[1] <> e.ledger_kind OR t.moments <> e.ledger_moments)
        """,
    ),
    (
        "stripe_transactions_have_their_events",
        "every purchase, subscription grant, clawback and clawback reversal references the applied Stripe event "
        "that recorded it",
        """
        SELECT t.id, t.kind, t.reference, e.ledger_kind AS event_kind
        FROM ledger_transactions t LEFT JOIN stripe_events e ON e.id = t.reference
        WHERE t.kind IN ('purchase', 'subscription_grant', 'clawback', 'clawback_reversal')
          AND e.ledger_kind IS DISTINCT FROM t.kind
        """,
    ),
)


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
    not_applied: int
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


_transactions_decoder = msgspec.json.Decoder(list[ReconciledTransaction])


async def reconcile(
    connection: asyncpg.Pool | Connection, *, since: datetime | None, until: datetime | None
) -> ReconciliationOut:
    """Every Stripe money event of the window (by Stripe's `created`) beside the ledger transactions that
    reference it, the Stripe-kind transactions of the window (by `created_at`) that reference no event,
    totals per kind, and every mismatch."""
    rows = await connection.fetch(
        f"""
        SELECT e.id, e.type, e.created, e.applied_at IS NOT NULL AS applied, e.outcome, e.last_error, e.attempts,
               e.ledger_kind, e.ledger_moments,
               coalesce((
                   SELECT json_agg(json_build_object(
                       'transaction_id', t.id, 'kind', t.kind, 'user_id', t.user_id, 'moments', m.moments,
                       'reference', t.reference, 'created_at', t.created_at) ORDER BY t.id)
                   FROM ledger_transactions t {_TRANSACTION_MOMENTS} WHERE t.reference = e.id
               ), '[]')::text AS transactions
        FROM stripe_events e
        WHERE (e.type = ANY($1::text[]) OR e.ledger_kind IS NOT NULL)
          AND ($2::timestamptz IS NULL OR e.created >= $2) AND ($3::timestamptz IS NULL OR e.created < $3)
        ORDER BY e.created, e.id
        LIMIT $4
        """,
        list(MONEY_EVENTS),
        since,
        until,
        RECONCILIATION_EVENTS_MAX + 1,
    )
    if len(rows) > RECONCILIATION_EVENTS_MAX:
        raise ValidationFailed(
            "since",
            f"more than {RECONCILIATION_EVENTS_MAX} Stripe money events in the window; "
            "ask for a narrower since/until window",
        )
    strays = await connection.fetch(
        f"""
        SELECT t.id AS transaction_id, t.kind, t.user_id, m.moments, t.reference, t.created_at
        FROM ledger_transactions t {_TRANSACTION_MOMENTS}
        WHERE t.kind = ANY($1::text[])
          AND ($2::timestamptz IS NULL OR t.created_at >= $2) AND ($3::timestamptz IS NULL OR t.created_at < $3)
          AND NOT EXISTS (SELECT 1 FROM stripe_events e WHERE e.id = t.reference)
        ORDER BY t.id
        """,
        list(STRIPE_KINDS),
        since,
        until,
    )
    events: list[ReconciledEvent] = []
    mismatches: list[Mismatch] = []
    stripe_totals = dict.fromkeys(STRIPE_KINDS, 0)
    ledger_totals = dict.fromkeys(STRIPE_KINDS, 0)
    ledger_counts = dict.fromkeys(STRIPE_KINDS, 0)
    for row in rows:
        transactions = _transactions_decoder.decode(row["transactions"])
        event = ReconciledEvent(
            event_id=row["id"],
            type=row["type"],
            created=row["created"],
            applied=row["applied"],
            outcome=row["outcome"],
            last_error=row["last_error"],
            attempts=row["attempts"],
            expected_kind=row["ledger_kind"],
            expected_moments=row["ledger_moments"],
            transactions=transactions,
        )
        events.append(event)
        mismatches += _event_mismatches(event)
        if event.expected_kind is not None and event.expected_moments is not None:
            stripe_totals[event.expected_kind] += event.expected_moments
        for transaction in transactions:
            if transaction.kind in ledger_totals:
                ledger_totals[transaction.kind] += transaction.moments
                ledger_counts[transaction.kind] += 1
    stray_transactions = [
        ReconciledTransaction(
            transaction_id=row["transaction_id"],
            kind=row["kind"],
            user_id=row["user_id"],
            moments=row["moments"],
            reference=row["reference"],
            created_at=row["created_at"],
        )
        for row in strays
    ]
    for stray in stray_transactions:
        ledger_totals[stray.kind] += stray.moments
        ledger_counts[stray.kind] += 1
        mismatches.append(
            Mismatch(
                code="transaction_without_event",
                transaction_id=stray.transaction_id,
                detail=f"{stray.kind} of {stray.moments} moments for {stray.user_id} references "
                f"{stray.reference!r}, which is no stored Stripe event",
            )
        )
    credited = sum(ledger_totals[kind] for kind in ("purchase", "subscription_grant", "clawback_reversal"))
    applied = sum(1 for event in events if event.applied)
    return ReconciliationOut(
        ok=not mismatches,
        since=since,
        until=until,
        events=events,
        transactions_without_event=stray_transactions,
        totals=ReconciliationTotals(
            events=len(events),
            applied=applied,
            not_applied=len(events) - applied,
            credited_moments=credited,
            clawed_back_moments=ledger_totals["clawback"],
            by_kind=[
                KindTotal(
                    kind=kind,
                    stripe_moments=stripe_totals[kind],
                    ledger_moments=ledger_totals[kind],
                    ledger_transactions=ledger_counts[kind],
                )
                for kind in STRIPE_KINDS
            ],
        ),
        mismatches=mismatches,
    )


def _event_mismatches(event: ReconciledEvent) -> list[Mismatch]:
    found: list[Mismatch] = []
    if not event.applied:
        found.append(
            Mismatch(
                code="event_not_applied",
                event_id=event.event_id,
                detail=f"{event.type} stored but not applied after {event.attempts} attempt(s): {event.last_error}",
            )
        )
    if event.expected_kind is None:
        found += [
            Mismatch(
                code="unexpected_transaction",
                event_id=event.event_id,
                transaction_id=t.transaction_id,
                detail=f"{t.kind} of {t.moments} references {event.event_id}, which recorded no ledger effect",
            )
            for t in event.transactions
        ]
        return found
    if not event.transactions:
        found.append(
            Mismatch(
                code="event_without_transaction",
                event_id=event.event_id,
                detail=f"{event.type} recorded a {event.expected_kind} of {event.expected_moments} moments; "
                "no ledger transaction references it",
            )
        )
        return found
    if len(event.transactions) > 1:
        found.append(
            Mismatch(
                code="duplicate_transactions",
                event_id=event.event_id,
                detail=f"{len(event.transactions)} ledger transactions reference {event.event_id}",
            )
        )
    for transaction in event.transactions:
        if transaction.kind != event.expected_kind:
            found.append(
                Mismatch(
                    code="kind_differs",
                    event_id=event.event_id,
                    transaction_id=transaction.transaction_id,
                    detail=f"the event recorded a {event.expected_kind}; the ledger has a {transaction.kind}",
                )
            )
        elif transaction.moments != event.expected_moments:
            found.append(
                Mismatch(
                    code="amount_differs",
                    event_id=event.event_id,
                    transaction_id=transaction.transaction_id,
                    detail=f"the event recorded {event.expected_moments} moments; "
                    f"the ledger moved {transaction.moments}",
                )
            )
    return found


# ---------------------------------------------------------------------------------------------------
# The webhook and checkout as the API calls them.

SIGNATURE_HEADER = "stripe-signature"


async def receive_webhook(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    settings: StripeSettings,
    *,
    payload: bytes,
    signature: str | None,
) -> WebhookOut:
    """Verifies the signature, stores the event under its id, then applies it (once)."""
    if settings.webhook_secret is None:
        raise StripeNotConfigured("STRIPE_WEBHOOK_SECRET is not set: this service is not connected to Stripe")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, settings.webhook_secret, settings.webhook_tolerance_s)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as invalid:
        # The header itself is never logged: it is a credential for this one body.
        message = invalid.user_message if isinstance(invalid, stripe.StripeError) else "body is not UTF-8"
        raise InvalidSignature(f"Stripe-Signature does not verify: {message}") from None
    try:
        envelope = parse_envelope(payload)
    except InvalidEvent as invalid:
        raise ValidationFailed("body", f"not a Stripe event: {invalid}") from None
    stored = await store_event(pool, envelope, payload)
    result = await apply_event(pool, ledger_service, catalog, envelope.id)
    log.info("stripe_webhook", event_id=envelope.id, event_type=envelope.type, new=stored, status=result.status)
    if result.status == "failed":
        raise Unavailable(
            f"event {envelope.id} is stored but could not be applied now ({result.detail}); it will be retried"
        )
    return WebhookOut(id=envelope.id, status=result.status, detail=result.detail)


def pack_or_tier(catalog: pricing.Catalog, body: CheckoutCreate) -> tuple[pricing.Pack | None, pricing.Tier | None]:
    if (body.pack is None) == (body.tier is None):
        field = "pack" if body.pack is None else "tier"
        raise ValidationFailed(field, "give exactly one of pack or tier")
    if body.pack is not None:
        pack = catalog.pack(body.pack)
        if pack is None:
            allowed = [p.id for p in catalog.packs]
            raise ValidationFailed("pack", one_of(allowed), allowed=allowed)
        return pack, None
    purchasable = [t.name for t in catalog.tiers if t.stripe_price_id is not None]
    tier = catalog.tier(body.tier or "")
    if tier is None or tier.stripe_price_id is None:
        raise ValidationFailed("tier", one_of(purchasable), allowed=purchasable)
    return None, tier


def checkout_request_json_schema(catalog: pricing.Catalog) -> dict[str, Any]:
    """`pack_or_tier`'s rule as JSON Schema: exactly one of a catalog pack or a purchasable tier."""
    packs = [p.id for p in catalog.packs]
    purchasable = [t.name for t in catalog.tiers if t.stripe_price_id is not None]
    return {
        "properties": {
            "pack": {"enum": [*packs, None]},
            "tier": {"enum": [*purchasable, None]},
        },
        "oneOf": [
            {
                "title": "a moment pack",
                "required": ["pack"],
                "properties": {"pack": {"enum": packs}, "tier": {"const": None}},
            },
            {
                "title": "a tier",
                "required": ["tier"],
                "properties": {"tier": {"enum": purchasable}, "pack": {"const": None}},
            },
        ],
    }


async def checkout(
    *,
    pool: asyncpg.Pool,
    gateway: StripeGateway | None,
    settings: StripeSettings,
    catalog: pricing.Catalog,
    caller: Caller,
    user_id: str,
    body: CheckoutCreate,
    key: str,
) -> CheckoutOut:
    pack, tier = pack_or_tier(catalog, body)
    if gateway is None:
        raise StripeNotConfigured("STRIPE_API_KEY is not set: this service is not connected to Stripe")
    return await create_checkout_session(
        pool=pool,
        gateway=gateway,
        settings=settings,
        catalog=catalog,
        caller=caller,
        user_id=user_id,
        pack=pack,
        tier=tier,
        key=key,
    )
