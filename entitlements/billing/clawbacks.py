"""Refunds and disputes: what a charge paid for, and what taking the money back does to it.

A charge paid for one of two things (`Paid`): a **moment pack** bought through Checkout
(`stripe_purchases`, found by charge or payment intent) or a **subscription's allowance** granted by an
invoice (`stripe_invoices`, found through the payment: the charge's `invoice` before 2025-03-31.basil, an
`invoice_payment.paid` event, a pre-basil invoice naming its charge, or Stripe's invoice payments,
retrieved through the stripe library).

- **Pack, refunded**: moments * amount_refunded / amount back, cumulative, rounded down, all of them on a
  full refund; taken from the pack's lot first and then in spending order; what the user no longer has
  becomes debt (they spent moments that were paid for with money they got back).
- **Allowance, refunded**: of what is still *unspent* in the invoice's allowance lot, the share the new
  refund is of what was not refunded before: (what amount_refunded adds) / (amount - what was refunded before). A full
  refund takes everything unspent; nothing spent is taken back and no debt is created (the allowance
  was a monthly benefit, and what it bought is delivered).
- **Dispute opened** (any status that holds the funds, `lost` included): takes back what the charge
  bought that is not refunded yet: the pack's rest (debt if spent), or the allowance's unspent rest.
- **Dispute won** (`won`, `warning_closed`, `prevented`), including after `lost` on appeal: gives back what
  it took, once: a paid lot for a pack, a subscription lot expiring with the allowance's period for an
  allowance (nothing if that period has ended). `lost` and `appeal_*` leave the clawback standing.
- A dispute does not change the tier: the tier is the subscription's status in Stripe. Ending the
  subscription of a customer who disputes is done in Stripe; its event drops the tier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import ledger
from entitlements.billing import queries
from entitlements.billing.effects import (
    ACTOR,
    Context,
    Effect,
    NotYetApplicable,
    convert,
    post,
    without_effect,
)
from entitlements.billing.events import Charge, Dispute, ref_id
from entitlements.billing.gateway import InvoiceOfPayment
from ledger import Connection

# Dispute statuses that end it in the user's favour: what it took goes back.
DISPUTE_RELEASED = frozenset({"won", "warning_closed", "prevented"})
# Statuses of a dispute still being fought over (an inquiry, a chargeback, an appeal): the funds are held.
DISPUTE_OPEN = frozenset(
    {
        "warning_needs_response",
        "warning_under_review",
        "needs_response",
        "under_review",
        "appeal_needs_response",
        "appeal_under_review",
    }
)
DISPUTE_EVENTS = (
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)

PaidKind = Literal["pack", "allowance"]


@dataclass(frozen=True)
class Paid:
    """What a charge paid for, as stored: a moment pack or a subscription allowance."""

    kind: PaidKind
    # The checkout session or the invoice.
    key: str
    charge_id: str | None
    user_id: str
    # The pack's id or the tier's name.
    label: str
    moments: int
    amount_paid: int
    lot_id: int | None
    # When the allowance expires (None for packs).
    expires_at: datetime | None
    # Stripe's cumulative amount refunded as last applied, and the moments refunds took back for it.
    amount_refunded: int
    refund_moments: int
    # What open or lost disputes hold back.
    dispute_moments: int

    @property
    def remaining(self) -> int:
        """The moments neither a refund nor a dispute has taken back yet."""
        return self.moments - self.refund_moments - self.dispute_moments

    @property
    def queries(self) -> dict[str, str]:
        return queries.ON_PURCHASE if self.kind == "pack" else queries.ON_INVOICE

    @property
    def described(self) -> str:
        return f"{self.label} ({self.key})" if self.kind == "pack" else f"the {self.label} allowance of {self.key}"


def _paid(kind: PaidKind, row: Any) -> Paid:
    return Paid(kind=kind, **dict(row))


async def paid_for(
    context: Context, charge_id: str, payment_intent_id: str | None, invoice_id: str | None
) -> Paid | Effect:
    """What a charge paid for, or the without-effect Effect of an invoice that granted nothing. Waits
    (NotYetApplicable) when neither is recorded yet."""
    connection = context.connection
    row = await connection.fetchrow(queries.PURCHASE_OF_CHARGE_FOR_UPDATE, charge_id, payment_intent_id)
    if row is not None:
        purchase = _paid("pack", row)
        if purchase.charge_id is None:
            await connection.execute(queries.SET_PURCHASE_CHARGE, purchase.key, charge_id)
        return purchase
    payments = [payment for payment in (payment_intent_id, charge_id) if payment is not None]
    invoice_id = invoice_id or await connection.fetchval(queries.INVOICE_OF_PAYMENT, payments)
    if invoice_id is None and payment_intent_id is not None:
        try:
            invoice_id = context.stripe(InvoiceOfPayment(payment_intent_id))
        except NotYetApplicable as unanswered:
            raise _no_purchase(charge_id, payment_intent_id, f"and {unanswered}") from None
    if invoice_id is None:
        why = "and it paid no invoice" if payment_intent_id else "and it names no payment intent to find its invoice by"
        raise _no_purchase(charge_id, payment_intent_id, why)
    for payment in payments:
        await connection.execute(queries.REMEMBER_INVOICE_PAYMENT, payment, invoice_id)
    row = await connection.fetchrow(queries.INVOICE_FOR_UPDATE, invoice_id)
    if row is None:
        raise NotYetApplicable(f"charge {charge_id} paid invoice {invoice_id}, whose invoice.paid is not applied yet")
    allowance = _paid("allowance", row)
    if allowance.moments == 0:
        return without_effect(f"charge {charge_id} paid invoice {invoice_id}, which granted nothing")
    return allowance


def _no_purchase(charge_id: str, payment_intent_id: str | None, why_not_an_invoice: str) -> NotYetApplicable:
    return NotYetApplicable(
        f"no moment-pack purchase recorded for charge {charge_id} (payment_intent {payment_intent_id}) yet, "
        f"{why_not_an_invoice}"
    )


# Refunds -------------------------------------------------------------------------------------------------


def refund_moments(moments: int, amount_refunded: int, amount: int) -> int:
    """The moments a cumulative refund of a pack takes back: proportional, rounded down (so the user is
    never charged moments for money not refunded), and exactly all of them for a full refund."""
    if amount <= 0:
        return moments if amount_refunded > 0 else 0
    return moments * min(amount_refunded, amount) // amount


@dataclass(frozen=True)
class RefundDecision:
    # Stripe's cumulative amount refunded, to record (it never goes down).
    amount_refunded: int
    # The moments this refund newly takes back (nothing when zero or less) …
    wanted: int
    # … of which these are still the user's to claw back; the rest is held by open disputes already.
    taken: int


def refund_decision(purchase: Paid, charge: Charge) -> RefundDecision:
    """What a charge's (cumulative) refund takes back from the pack it paid for."""
    target = refund_moments(purchase.moments, charge.amount_refunded, charge.amount or purchase.amount_paid)
    wanted = target - purchase.refund_moments
    return RefundDecision(
        amount_refunded=max(charge.amount_refunded, purchase.amount_refunded),
        wanted=wanted,
        taken=min(wanted, purchase.remaining) if wanted > 0 else 0,
    )


def refund_share(amount: int, amount_refunded: int, refunded_before: int) -> tuple[int, int] | None:
    """The share of an allowance's unspent rest a new refund takes: what it adds over what was
    refunded before, of what was not refunded before; None when it adds nothing."""
    added = min(amount_refunded, amount) - refunded_before
    rest = amount - refunded_before
    if added <= 0 or rest <= 0:
        return None
    return added, rest


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


def proportional_shares(open_disputes: Sequence[tuple[str, int]], share: tuple[int, int]) -> list[tuple[str, int]]:
    """What each open dispute of an allowance gives up to a refund taking `share` of its unspent rest."""
    added, rest = share
    shares = [(dispute_id, held * added // rest) for dispute_id, held in open_disputes]
    return [(dispute_id, take) for dispute_id, take in shares if take > 0]


async def _shift(connection: Connection, shares: list[tuple[str, int]]) -> int:
    """Moments open disputes held now count as refunded, so winning them later does not give back what
    the refund returned to the card."""
    for dispute_id, take in shares:
        await connection.execute(queries.TAKE_FROM_DISPUTE, dispute_id, take)
    return sum(take for _, take in shares)


async def _open_disputes(connection: Connection, paid: Paid) -> list[tuple[str, int]]:
    rows = await connection.fetch(paid.queries["open_disputes_for_update"], paid.key)
    return [(row["dispute_id"], row["moments"]) for row in rows]


async def apply_charge_refunded(context: Context) -> Effect:
    charge: Charge = convert(context.event, Charge)
    paid = await paid_for(context, charge.id, ref_id(charge.payment_intent), ref_id(charge.invoice))
    if isinstance(paid, Effect):
        return paid
    if paid.kind == "pack":
        return await _refund_pack(context, charge, paid)
    return await _refund_allowance(context, charge, paid)


def _clawed_back(taken: int, paid: Paid, already: str | None) -> Effect:
    if already:
        return without_effect(already)
    return Effect(f"clawed back {taken} moments of {paid.described} from {paid.user_id}", "clawback", taken)


async def _refund_pack(context: Context, charge: Charge, purchase: Paid) -> Effect:
    connection = context.connection
    decision = refund_decision(purchase, charge)
    if decision.wanted <= 0:
        await connection.execute(purchase.queries["set_amount_refunded"], purchase.key, decision.amount_refunded)
        return without_effect(f"refunds up to {charge.amount_refunded} were already clawed back")
    taken = decision.taken
    shifted = await _shift(
        connection, dispute_shares(await _open_disputes(connection, purchase), decision.wanted - taken)
    )
    effect = Effect(f"refund of {charge.amount_refunded}: what it takes back, open disputes hold already")
    if taken > 0:
        posted = await post(
            context,
            ledger.Clawback(
                key=f"stripe:refund:{charge.id}:{charge.amount_refunded}",
                user_id=purchase.user_id,
                actor=ACTOR,
                reason=f"refund of {charge.amount_refunded}/{charge.amount} of {purchase.label} (charge {charge.id})",
                reference=context.event.id,
                amount=taken,
                lot_id=purchase.lot_id,
            ),
        )
        effect = _clawed_back(taken, purchase, posted if isinstance(posted, str) else None)
    await connection.execute(
        purchase.queries["record_refund"], purchase.key, decision.amount_refunded, taken + shifted, shifted
    )
    return effect


async def _refund_allowance(context: Context, charge: Charge, allowance: Paid) -> Effect:
    connection = context.connection
    share = refund_share(charge.amount or allowance.amount_paid, charge.amount_refunded, allowance.amount_refunded)
    recorded = max(charge.amount_refunded, allowance.amount_refunded)
    if share is None:
        await connection.execute(allowance.queries["set_amount_refunded"], allowance.key, recorded)
        return without_effect(f"refunds up to {charge.amount_refunded} of invoice {allowance.key} were already applied")
    shifted = await _shift(connection, proportional_shares(await _open_disputes(connection, allowance), share))
    taken = 0
    effect = Effect(f"refund of {charge.amount_refunded}: nothing of {allowance.described} is unspent")
    if allowance.lot_id is not None:
        posted = await post(
            context,
            ledger.ClawbackUnspent(
                key=f"stripe:refund:{charge.id}:{charge.amount_refunded}",
                user_id=allowance.user_id,
                actor=ACTOR,
                reason=f"refund of {charge.amount_refunded}/{charge.amount} of {allowance.described}: "
                f"{share[0]}/{share[1]} of what is unspent",
                reference=context.event.id,
                lot_id=allowance.lot_id,
                numerator=share[0],
                denominator=share[1],
            ),
        )
        if isinstance(posted, str):
            effect = without_effect(posted)
        elif posted.amount > 0:
            taken = posted.amount
            effect = _clawed_back(taken, allowance, None)
    if taken == 0 and shifted == 0 and not effect.without_effect:
        effect = without_effect(effect.outcome)
    await connection.execute(allowance.queries["record_refund"], allowance.key, recorded, taken + shifted, shifted)
    return effect


# Disputes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedDispute:
    status: Literal["open", "won", "lost"]
    # What it holds back (open, lost) or held back until it was won.
    moments: int


# What an event about a dispute does, given the dispute as recorded (None: nothing recorded yet):
# take (it opens), take_lost (it is lost before its opening was applied), record_won (won before anything
# was taken), mark_lost (it is lost: the clawback stands), release (won, or won on appeal after lost).
DisputeStep = Literal["take", "take_lost", "record_won", "mark_lost", "release"]


def dispute_step(dispute_id: str, status: str, recorded: RecordedDispute | None) -> DisputeStep | Effect:
    """Every dispute event carries the dispute's current status; the recorded state moves towards it
    only forwards (open → lost → won on appeal; won is final), so events in any order end right."""
    if status not in DISPUTE_OPEN | DISPUTE_RELEASED | {"lost"}:
        return without_effect(f"dispute {dispute_id} is {status}: not a status this service acts on")
    if recorded is None:
        if status in DISPUTE_RELEASED:
            return "record_won"
        return "take_lost" if status == "lost" else "take"
    if recorded.status == "won":
        return without_effect(f"dispute {dispute_id} was already won")
    if status in DISPUTE_RELEASED:
        return "release"
    if status == "lost":
        return "mark_lost" if recorded.status == "open" else without_effect(f"dispute {dispute_id} was already lost")
    return without_effect(
        f"dispute {dispute_id} is {status}; recorded {recorded.status}, its clawback of {recorded.moments} stands"
    )


async def apply_dispute(context: Context) -> Effect:
    dispute: Dispute = convert(context.event, Dispute)
    charge_id = ref_id(dispute.charge) or ""
    paid = await paid_for(context, charge_id, ref_id(dispute.payment_intent), None)
    if isinstance(paid, Effect):
        return paid
    row = await context.connection.fetchrow(queries.DISPUTE_FOR_UPDATE, dispute.id)
    recorded = RecordedDispute(status=row["status"], moments=row["moments"]) if row is not None else None
    step = dispute_step(dispute.id, dispute.status, recorded)
    if isinstance(step, Effect):
        return step
    if step in ("take", "take_lost"):
        return await _dispute_take(context, dispute, paid, "open" if step == "take" else "lost")
    if step == "record_won":
        # Its opening, when it comes, finds this row and does nothing.
        await _insert_dispute(context.connection, dispute.id, paid, 0, "won")
        return Effect(f"dispute {dispute.id} won before its opening was applied: nothing was taken")
    assert recorded is not None
    await context.connection.execute(queries.CLOSE_DISPUTE, dispute.id, "lost" if step == "mark_lost" else "won")
    if step == "mark_lost":
        return Effect(f"dispute {dispute.id} lost: the clawback of {recorded.moments} moments stands")
    return await _dispute_release(context, dispute, paid, recorded.moments)


async def _insert_dispute(connection: Connection, dispute_id: str, paid: Paid, moments: int, status: str) -> None:
    await connection.execute(
        queries.INSERT_DISPUTE,
        dispute_id,
        paid.key if paid.kind == "pack" else None,
        paid.key if paid.kind == "allowance" else None,
        moments,
        status,
    )


async def _dispute_take(context: Context, dispute: Dispute, paid: Paid, status: str) -> Effect:
    key, reason = f"stripe:dispute:{dispute.id}", f"dispute {dispute.id} of {paid.described}"
    operation: ledger.Clawback | ledger.ClawbackUnspent | None = None
    if paid.kind == "pack" and paid.remaining > 0:
        operation = ledger.Clawback(
            key=key,
            user_id=paid.user_id,
            actor=ACTOR,
            reason=reason,
            reference=context.event.id,
            amount=paid.remaining,
            lot_id=paid.lot_id,
        )
    elif paid.kind == "allowance" and paid.lot_id is not None:
        operation = ledger.ClawbackUnspent(
            key=key,
            user_id=paid.user_id,
            actor=ACTOR,
            reason=f"{reason}: what is unspent",
            reference=context.event.id,
            lot_id=paid.lot_id,
            numerator=1,
            denominator=1,
        )
    posted = await post(context, operation) if operation is not None else None
    taken = posted.amount if isinstance(posted, ledger.Result) else 0
    await _insert_dispute(context.connection, dispute.id, paid, taken, status)
    if taken > 0:
        await context.connection.execute(paid.queries["add_dispute_moments"], paid.key, taken)
    if isinstance(posted, str):
        return without_effect(posted)
    if taken == 0:
        return Effect(f"dispute {dispute.id}: nothing of {paid.described} was left to claw back")
    return Effect(
        f"dispute {dispute.id}: clawed back {taken} moments of {paid.described} from {paid.user_id}", "clawback", taken
    )


async def _dispute_release(context: Context, dispute: Dispute, paid: Paid, moments: int) -> Effect:
    if moments == 0:
        return Effect(f"dispute {dispute.id} won: nothing had been taken")
    expires_at = paid.expires_at
    if paid.kind == "allowance" and (expires_at is None or expires_at <= context.now):
        await context.connection.execute(paid.queries["reverse_dispute_moments"], paid.key, moments, None)
        return Effect(f"dispute {dispute.id} won after {paid.described} expired: its {moments} moments would have too")
    posted = await post(
        context,
        ledger.Credit(
            key=f"stripe:dispute:{dispute.id}:won",
            user_id=paid.user_id,
            actor=ACTOR,
            reason=f"dispute {dispute.id} of {paid.described} won: the clawback is reversed",
            reference=context.event.id,
            amount=moments,
            kind="clawback_reversal",
            category="paid" if paid.kind == "pack" else "subscription",
            expires_at=expires_at if paid.kind == "allowance" else None,
        ),
    )
    if isinstance(posted, str):
        return without_effect(posted)
    # The reversal's lot now holds the moments: a later refund takes from it first.
    await context.connection.execute(
        paid.queries["reverse_dispute_moments"], paid.key, moments, posted.lot_ids[0] if posted.lot_ids else None
    )
    return Effect(
        f"dispute {dispute.id} won: gave back {moments} moments to {paid.user_id}", "clawback_reversal", moments
    )
