"""Finance's reconciliation of Stripe's events against the ledger, and the audit checks of the same.

Both match on the reference convention (`handlers.py`): every ledger transaction an event produced has
`reference` = the event id, and the event recorded the kind and moments it meant to post. Their SQL joins
the ledger's tables, on purpose (`queries.py` says why).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

import ledger
from entitlements.billing import queries
from entitlements.billing.effects import STRIPE_KINDS
from entitlements.billing.handlers import MONEY_EVENTS
from entitlements.billing.schemas import (
    KindTotal,
    Mismatch,
    ReconciledEvent,
    ReconciledTransaction,
    ReconciliationOut,
    ReconciliationTotals,
)
from entitlements.errors import ValidationFailed
from ledger import Connection

# Reconciliation lists every event of its window; more than this is refused (ask for a narrower window).
RECONCILIATION_EVENTS_MAX = 10_000

AUDIT_CHECKS: tuple[ledger.ExtraCheck, ...] = (
    (
        "stripe_events_have_their_transactions",
        "every applied Stripe event that moved moments has exactly one ledger transaction referencing it, "
        "of the kind and amount it recorded",
        queries.AUDIT_EVENTS_WITHOUT_THEIR_TRANSACTION,
    ),
    (
        "stripe_transactions_have_their_events",
        "every purchase, subscription grant, clawback and clawback reversal references the applied Stripe event "
        "that recorded it",
        queries.AUDIT_TRANSACTIONS_WITHOUT_THEIR_EVENT,
    ),
)

_transactions_decoder = msgspec.json.Decoder(list[ReconciledTransaction])


async def reconcile(
    connection: asyncpg.Pool | Connection, *, since: datetime | None, until: datetime | None
) -> ReconciliationOut:
    """Every Stripe money event of the window (by Stripe's `created`), and every event of any type that has
    not ended or ended failed, beside the ledger transactions that reference it; the Stripe-kind
    transactions of the window (by `created_at`) that reference no event; totals per kind; and every
    mismatch."""
    rows = await connection.fetch(
        queries.RECONCILED_EVENTS, list(MONEY_EVENTS), since, until, RECONCILIATION_EVENTS_MAX + 1
    )
    if len(rows) > RECONCILIATION_EVENTS_MAX:
        raise ValidationFailed(
            "since",
            f"more than {RECONCILIATION_EVENTS_MAX} Stripe money events in the window; "
            "ask for a narrower since/until window",
        )
    strays = await connection.fetch(queries.STRAY_TRANSACTIONS, list(STRIPE_KINDS), since, until)
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
            state=row["state"],
            applied=row["state"] in ("applied", "applied_without_effect"),
            outcome=row["outcome"],
            last_error=row["last_error"],
            attempts=row["attempts"],
            expected_kind=row["ledger_kind"],
            expected_moments=row["ledger_moments"],
            transactions=transactions,
        )
        events.append(event)
        mismatches += event_mismatches(event)
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
    failed = sum(1 for event in events if event.state == "failed")
    return ReconciliationOut(
        ok=not mismatches,
        since=since,
        until=until,
        events=events,
        transactions_without_event=stray_transactions,
        totals=ReconciliationTotals(
            events=len(events),
            applied=applied,
            not_applied=len(events) - applied - failed,
            failed=failed,
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


def event_mismatches(event: ReconciledEvent) -> list[Mismatch]:
    """What is wrong with one event of the window and the transactions that reference it. Pure."""
    found: list[Mismatch] = []
    if event.state == "failed":
        found.append(
            Mismatch(
                code="event_failed",
                event_id=event.event_id,
                detail=f"{event.type} failed after {event.attempts} attempt(s): {event.last_error} "
                "(re-apply it after the fix: moments stripe reapply, or POST /v1/stripe/events/{id}/reapply)",
            )
        )
    elif not event.applied:
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
