"""What each Stripe event does: one handler per event type (`HANDLERS`, cosmicpython's handler registry).

A handler runs inside the event's transaction (`service.apply_event` opens it and marks the event
applied in it): it reads the stored state it needs under lock, DECIDES with a pure function of this
module over the event and that state (`subscription_update_refusal`, `invoice_allowance`, `purchased_pack`,
`refund_decision`, `dispute_shares`, `dispute_closing`, `customer_owner`), then performs the decision:
ledger operations through `Ledger.execute_in` on the event's connection, and billing's own rows. It
answers an `Effect`, or raises `NotYetApplicable` to leave the event stored for a later attempt.

**Reference convention.** Every ledger transaction an event produces has `reference` = the Stripe
event id (`evt_…`), and the Effect records the kind and moments it meant to post (stored on the event as
`ledger_kind`, `ledger_moments`). Reconciliation and the audit match the two on that reference. Ledger
idempotency keys are derived from Stripe object ids (`stripe:invoice:{id}`, `stripe:checkout:{id}`, …),
so neither a re-application of an event nor a second event about the same object can credit twice.

**Ordering.** Stripe does not deliver in order. A subscription event whose `created` is older than the
stored `subscriptions.stripe_event_created` does not win; on a tie (Stripe's clock has one-second
resolution) the state further along the subscription's lifecycle wins; an ended subscription never comes
back; an event about a subscription that is not the user's current one cannot take the tier away.
Money events that arrive before what they refer to (a refund before its purchase) wait, stored, and are
retried until it is there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec

import ledger
import pricing
from entitlements.billing import queries
from entitlements.billing.events import (
    Charge,
    CheckoutSession,
    Customer,
    Dispute,
    Invoice,
    Subscription,
    ref_id,
)
from entitlements.schemas import is_user_id
from ledger import Connection

ACTOR = "stripe:webhook"

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


@dataclass(frozen=True)
class StoredEvent:
    id: str
    type: str
    created: datetime
    object: dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a handler works with: the event's connection (its transaction is open), the ledger, the
    catalog, the event, and the time it is applied at."""

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


def _timestamp(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


async def _post(context: Context, operation: ledger.AnyOperation) -> ledger.Result | str:
    """One ledger operation inside the event's transaction. A str answer means another event already
    performed it (same key, another reference): nothing new was written."""
    (outcome,) = await context.ledger.execute_in(context.connection, [operation], now=context.now)
    if isinstance(outcome, ledger.IdempotencyConflict):
        earlier = await context.ledger.reference_of(operation.key, connection=context.connection)
        return f"already applied by Stripe event {earlier}"
    if isinstance(outcome, ledger.LedgerRuleError):
        # Credits and clawbacks are never refused for the user's state; a refusal here is a bug or a
        # payload the rules reject, and the event must not be marked applied.
        raise RuntimeError(f"the ledger refused {operation.key}: {outcome}")
    return outcome


# Customers -------------------------------------------------------------------------------------------


def _valid_user_id(value: str | None, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not is_user_id(value):
        raise NotYetApplicable(f"{source} {value!r} is not a valid user id")
    return value


def customer_owner(customer_id: str | None, mapped: str | None, from_metadata: str | None) -> str:
    """The user an object belongs to: its customer's stored mapping, else the (valid) metadata user_id.
    The two disagreeing, or neither known, leaves the event waiting."""
    if mapped is not None and from_metadata is not None and mapped != from_metadata:
        raise NotYetApplicable(
            f"customer {customer_id} belongs to {mapped!r} but the object's metadata names {from_metadata!r}"
        )
    user_id = mapped or from_metadata
    if user_id is None:
        raise NotYetApplicable(f"unknown customer {customer_id}: no stripe_customers row and no metadata.user_id")
    return user_id


async def _user_for(connection: Connection, customer_id: str | None, metadata_user_id: str | None) -> str:
    """The user an object belongs to: its customer's mapping, else the object's metadata user_id (which
    this service sets on every customer, session and subscription it creates)."""
    from_metadata = _valid_user_id(metadata_user_id, "metadata.user_id")
    mapped: str | None = None
    if customer_id is not None:
        mapped = await connection.fetchval(queries.USER_OF_CUSTOMER, customer_id)
    user_id = customer_owner(customer_id, mapped, from_metadata)
    if mapped is None and customer_id is not None:
        await remember_customer(connection, customer_id, user_id)
    return user_id


async def remember_customer(connection: Connection | asyncpg.Pool, customer_id: str, user_id: str) -> None:
    await connection.execute(queries.REMEMBER_CUSTOMER, customer_id, user_id)


async def _apply_customer(context: Context) -> Effect:
    customer: Customer = _convert(context.event, Customer)
    user_id = _valid_user_id((customer.metadata or {}).get("user_id"), "metadata.user_id")
    if user_id is None:
        return ignored("the customer has no metadata.user_id")
    await _user_for(context.connection, customer.id, user_id)
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
    period_end = _timestamp(subscription.current_period_end or (item.current_period_end if item else None))
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
    subscription: Subscription = _convert(event, Subscription)
    user_id = await _user_for(
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
        return ignored(refusal)
    await connection.execute(queries.UPDATE_SUBSCRIPTION, *values)
    return applied


# Invoices: the period's allowance --------------------------------------------------------------------


@dataclass(frozen=True)
class Allowance:
    """The moments a paid subscription invoice grants, as a lot that expires at the end of its period."""

    tier: pricing.Tier
    expires_at: datetime


def invoice_allowance(invoice: Invoice, catalog: pricing.Catalog, now: datetime) -> Allowance | Effect:
    """The allowance a paid invoice grants, or the ignored Effect of one that grants none."""
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
    tier = catalog.tier_by_price_id(lines[0].price_id or "")
    if tier is None:
        raise NotYetApplicable(f"price {lines[0].price_id} is not a tier's stripe_price_id in pricing/catalog.toml")
    if tier.monthly_allowance_moments == 0:
        return ignored(f"tier {tier.name} has no allowance")
    expires_at = datetime.fromtimestamp(lines[0].period.end, UTC)
    if expires_at <= now:
        return ignored(f"the period ended at {expires_at.isoformat()}; its allowance would expire at once")
    return Allowance(tier=tier, expires_at=expires_at)


async def _apply_invoice_paid(context: Context) -> Effect:
    event = context.event
    invoice: Invoice = _convert(event, Invoice)
    allowance = invoice_allowance(invoice, context.catalog, context.now)
    if isinstance(allowance, Effect):
        return allowance
    tier, expires_at = allowance.tier, allowance.expires_at
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


def purchased_pack(session: CheckoutSession, catalog: pricing.Catalog) -> pricing.Pack | Effect:
    """The pack a payment-mode Checkout session bought (its metadata `pack`, else a line's price), or the
    ignored Effect of a session that credits nothing now. A pack the catalog does not know waits."""
    pack_hint = (session.metadata or {}).get("pack")
    price_ids = [item.price.id for item in (session.line_items.data if session.line_items else []) if item.price]
    pack = catalog.pack(pack_hint) if pack_hint else None
    if pack is None and not pack_hint:
        pack = next((p for p in map(catalog.pack_by_price_id, price_ids) if p is not None), None)
    if pack is None:
        if pack_hint or price_ids:
            raise NotYetApplicable(f"pack {pack_hint or price_ids} is not in pricing/catalog.toml")
        return ignored("names no moment pack (metadata.pack or a line's price)")
    if session.payment_status != "paid":
        return ignored(
            f"payment_status is {session.payment_status}; checkout.session.async_payment_succeeded credits it once paid"
        )
    return pack


async def _apply_checkout_completed(context: Context) -> Effect:
    event = context.event
    session: CheckoutSession = _convert(event, CheckoutSession)
    user_hint = (session.metadata or {}).get("user_id") or session.client_reference_id
    customer_id = ref_id(session.customer)
    if session.mode != "payment":
        if customer_id is not None and _valid_user_id(user_hint, "metadata.user_id") is not None:
            await _user_for(context.connection, customer_id, user_hint)
        return ignored(f"a {session.mode} checkout (a subscription's own events set the tier)")
    pack = purchased_pack(session, context.catalog)
    if isinstance(pack, Effect):
        return pack
    user_id = await _user_for(context.connection, customer_id, user_hint)
    already = await context.connection.fetchval(queries.PURCHASE_EVENT_FOR_UPDATE, session.id)
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
        queries.INSERT_PURCHASE,
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


@dataclass(frozen=True)
class Purchase:
    """A moment pack bought through Checkout, as stored: what refunds and disputes claw back from."""

    checkout_session_id: str
    charge_id: str | None
    user_id: str
    pack_id: str
    moments: int
    amount_paid: int
    lot_id: int | None
    # Stripe's cumulative amount refunded as last applied, and the moments refunds took back for it.
    amount_refunded: int
    refund_moments: int
    # What open or lost disputes hold back.
    dispute_moments: int

    @property
    def remaining(self) -> int:
        """The moments neither a refund nor a dispute has taken back yet."""
        return self.moments - self.refund_moments - self.dispute_moments


async def _purchase_for(connection: Connection, charge_id: str, payment_intent_id: str | None) -> Purchase | None:
    row = await connection.fetchrow(queries.PURCHASE_OF_CHARGE_FOR_UPDATE, charge_id, payment_intent_id)
    if row is None:
        return None
    purchase = Purchase(**dict(row))
    if purchase.charge_id is None:
        await connection.execute(queries.SET_PURCHASE_CHARGE, purchase.checkout_session_id, charge_id)
    return purchase


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


@dataclass(frozen=True)
class RefundDecision:
    # Stripe's cumulative amount refunded, to record on the purchase (it never goes down).
    amount_refunded: int
    # The moments this refund newly takes back (nothing when zero or less) …
    wanted: int
    # … of which these are still the user's to claw back; the rest is held by open disputes already.
    taken: int


def refund_decision(purchase: Purchase, charge: Charge) -> RefundDecision:
    """What a charge's (cumulative) refund takes back from the purchase it paid for."""
    target = refund_moments(purchase.moments, charge.amount_refunded, charge.amount or purchase.amount_paid)
    wanted = target - purchase.refund_moments
    return RefundDecision(
        amount_refunded=max(charge.amount_refunded, purchase.amount_refunded),
        wanted=wanted,
        taken=min(wanted, purchase.remaining) if wanted > 0 else 0,
    )


def dispute_shares(open_disputes: Sequence[tuple[str, int]], moments: int) -> list[tuple[str, int]]:
    """How many of `moments` each open dispute (id, moments it holds back, in order) gives up: the first
    ones first, never more than one holds, never more than `moments` in all."""
    shares: list[tuple[str, int]] = []
    shifted = 0
    for dispute_id, held in open_disputes:
        take = min(held, moments - shifted)
        if take <= 0:
            break
        shares.append((dispute_id, take))
        shifted += take
    return shares


async def _clawback(
    context: Context, *, key: str, user_id: str, amount: int, lot_id: int | None, reason: str
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


async def _apply_charge_refunded(context: Context) -> Effect:
    charge: Charge = _convert(context.event, Charge)
    payment_intent_id = ref_id(charge.payment_intent)
    purchase = await _purchase_for(context.connection, charge.id, payment_intent_id)
    if purchase is None:
        if charge.invoice is not None:
            return ignored("a charge of an invoice (subscription), not of a moment pack")
        raise _no_purchase(charge.id, payment_intent_id)
    decision = refund_decision(purchase, charge)
    if decision.wanted <= 0:
        await context.connection.execute(
            queries.SET_PURCHASE_AMOUNT_REFUNDED, purchase.checkout_session_id, decision.amount_refunded
        )
        return ignored(f"refunds up to {charge.amount_refunded} were already clawed back")
    taken = decision.taken
    # An open dispute may already hold these moments back: they now count as refunded, so winning the
    # dispute later does not give back what the refund returned to the card.
    shifted = await _shift_from_open_disputes(context.connection, purchase.checkout_session_id, decision.wanted - taken)
    effect = Effect(f"refund of {charge.amount_refunded}: nothing left to claw back")
    if taken > 0:
        already = await _clawback(
            context,
            key=f"stripe:refund:{charge.id}:{charge.amount_refunded}",
            user_id=purchase.user_id,
            amount=taken,
            lot_id=purchase.lot_id,
            reason=f"refund of {charge.amount_refunded}/{charge.amount} of {purchase.pack_id} (charge {charge.id})",
        )
        effect = (
            ignored(already)
            if already
            else Effect(f"clawed back {taken} moments of {purchase.pack_id} from {purchase.user_id}", "clawback", taken)
        )
    await context.connection.execute(
        queries.RECORD_PURCHASE_REFUND,
        purchase.checkout_session_id,
        decision.amount_refunded,
        taken + shifted,
        shifted,
    )
    return effect


async def _shift_from_open_disputes(connection: Connection, session_id: str, moments: int) -> int:
    if moments <= 0:
        return 0
    rows = await connection.fetch(queries.OPEN_DISPUTES_FOR_UPDATE, session_id)
    shares = dispute_shares([(row["dispute_id"], row["moments"]) for row in rows], moments)
    for dispute_id, take in shares:
        await connection.execute(queries.TAKE_FROM_DISPUTE, dispute_id, take)
    return sum(take for _, take in shares)


async def _dispute_clawback(context: Context, dispute: Dispute, purchase: Purchase, status: str) -> Effect:
    remaining = purchase.remaining
    await context.connection.execute(
        queries.INSERT_DISPUTE, dispute.id, purchase.checkout_session_id, max(remaining, 0), status
    )
    if remaining <= 0:
        return Effect(f"dispute {dispute.id}: nothing left of {purchase.pack_id} to claw back")
    await context.connection.execute(queries.ADD_PURCHASE_DISPUTE_MOMENTS, purchase.checkout_session_id, remaining)
    already = await _clawback(
        context,
        key=f"stripe:dispute:{dispute.id}",
        user_id=purchase.user_id,
        amount=remaining,
        lot_id=purchase.lot_id,
        reason=f"dispute {dispute.id} of {purchase.pack_id} (charge {ref_id(dispute.charge)})",
    )
    if already:
        return ignored(already)
    return Effect(
        f"dispute {dispute.id}: clawed back {remaining} moments of {purchase.pack_id} from {purchase.user_id}",
        "clawback",
        remaining,
    )


@dataclass(frozen=True)
class RecordedDispute:
    status: Literal["open", "won", "lost"]
    # What it holds back (open, lost) or held back until it was won.
    moments: int


async def _dispute_and_purchase(context: Context) -> tuple[Dispute, Purchase, RecordedDispute | None]:
    dispute: Dispute = _convert(context.event, Dispute)
    charge_id = ref_id(dispute.charge) or ""
    payment_intent_id = ref_id(dispute.payment_intent)
    purchase = await _purchase_for(context.connection, charge_id, payment_intent_id)
    if purchase is None:
        raise _no_purchase(charge_id, payment_intent_id)
    row = await context.connection.fetchrow(queries.DISPUTE_FOR_UPDATE, dispute.id)
    recorded = RecordedDispute(status=row["status"], moments=row["moments"]) if row is not None else None
    return dispute, purchase, recorded


async def _apply_dispute_created(context: Context) -> Effect:
    dispute, purchase, recorded = await _dispute_and_purchase(context)
    if recorded is not None:
        return ignored(f"dispute {dispute.id} is already recorded ({recorded.status})")
    return await _dispute_clawback(context, dispute, purchase, "open")


# What closing a dispute does: it was recorded open and is now won or lost, or it closed before its
# opening was applied (then a lost one claws back what the opening would have; a won one took nothing).
DisputeClosing = Literal["won", "lost", "won_before_opening", "lost_before_opening"]


def dispute_closing(dispute_id: str, closed_as: str, recorded: RecordedDispute | None) -> DisputeClosing | Effect:
    """What a `charge.dispute.closed` with Stripe status `closed_as` does, given the dispute as recorded
    (None: its opening has not been applied), or the ignored Effect of one that does nothing."""
    won = closed_as in DISPUTE_WON
    if not won and closed_as != "lost":
        return ignored(f"dispute closed as {closed_as}")
    if recorded is None:
        return "won_before_opening" if won else "lost_before_opening"
    if recorded.status != "open":
        return ignored(f"dispute {dispute_id} already closed as {recorded.status}")
    return "won" if won else "lost"


async def _apply_dispute_closed(context: Context) -> Effect:
    dispute, purchase, recorded = await _dispute_and_purchase(context)
    closing = dispute_closing(dispute.id, dispute.status, recorded)
    if isinstance(closing, Effect):
        return closing
    if closing == "won_before_opening":
        # The opening, when it comes, finds this row and does nothing.
        await context.connection.execute(queries.INSERT_DISPUTE, dispute.id, purchase.checkout_session_id, 0, "won")
        return Effect(f"dispute {dispute.id} won before its opening was applied: nothing was taken")
    if closing == "lost_before_opening":
        return await _dispute_clawback(context, dispute, purchase, "lost")
    assert recorded is not None
    await context.connection.execute(queries.CLOSE_DISPUTE, dispute.id, closing)
    if closing == "lost":
        return Effect(f"dispute {dispute.id} lost: the clawback of {recorded.moments} moments stands")
    moments = recorded.moments
    if moments == 0:
        return Effect(f"dispute {dispute.id} won: nothing had been taken")
    posted = await _post(
        context,
        ledger.Credit(
            key=f"stripe:dispute:{dispute.id}:won",
            user_id=purchase.user_id,
            actor=ACTOR,
            reason=f"dispute {dispute.id} of {purchase.pack_id} won: the clawback is reversed",
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
        queries.REVERSE_PURCHASE_DISPUTE_MOMENTS,
        purchase.checkout_session_id,
        moments,
        posted.lot_ids[0] if posted.lot_ids else None,
    )
    return Effect(
        f"dispute {dispute.id} won: gave back {moments} moments to {purchase.user_id}", "clawback_reversal", moments
    )


# The registry ----------------------------------------------------------------------------------------

Handler = Callable[[Context], Awaitable[Effect]]
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
