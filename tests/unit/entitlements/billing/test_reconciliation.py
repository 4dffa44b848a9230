"""What reconciliation reports about one Stripe event beside the ledger transactions referencing it, pure."""

from __future__ import annotations

from datetime import UTC, datetime

from entitlements.billing.reconciliation import event_mismatches
from entitlements.billing.schemas import EventState, ReconciledEvent, ReconciledTransaction

AT = datetime(2025, 6, 1, tzinfo=UTC)


def transaction(transaction_id: int = 1, kind: str = "purchase", moments: int = 1000) -> ReconciledTransaction:
    return ReconciledTransaction(
        transaction_id=transaction_id, kind=kind, user_id="u1", moments=moments, reference="evt_1", created_at=AT
    )


def event(
    *transactions: ReconciledTransaction,
    state: EventState = "applied",
    kind: str | None = "purchase",
    moments: int | None = 1000,
) -> ReconciledEvent:
    applied = state in ("applied", "applied_without_effect")
    return ReconciledEvent(
        event_id="evt_1",
        type="checkout.session.completed",
        created=AT,
        state=state,
        applied=applied,
        outcome="credited",
        last_error=None if applied else "unknown customer cus_1",
        attempts=1,
        expected_kind=kind,
        expected_moments=moments,
        transactions=list(transactions),
    )


def codes(found: ReconciledEvent) -> list[str]:
    return [mismatch.code for mismatch in event_mismatches(found)]


def test_an_applied_event_with_its_one_transaction_matches() -> None:
    assert codes(event(transaction())) == []
    assert codes(event(kind=None, moments=None)) == []


def test_an_event_not_applied_is_reported_with_its_error() -> None:
    (mismatch,) = event_mismatches(event(state="pending", kind=None, moments=None))
    assert mismatch.code == "event_not_applied"
    assert "unknown customer cus_1" in mismatch.detail


def test_an_event_that_failed_is_reported_with_its_error_and_how_to_reapply_it() -> None:
    (mismatch,) = event_mismatches(event(state="failed", kind=None, moments=None))
    assert mismatch.code == "event_failed"
    assert "unknown customer cus_1" in mismatch.detail
    assert "moments stripe reapply" in mismatch.detail


def test_an_event_applied_without_effect_matches() -> None:
    assert codes(event(state="applied_without_effect", kind=None, moments=None)) == []


def test_a_transaction_referencing_an_event_that_recorded_no_effect_is_unexpected() -> None:
    assert codes(event(transaction(1), transaction(2), kind=None, moments=None)) == ["unexpected_transaction"] * 2


def test_an_event_whose_transaction_is_missing() -> None:
    assert codes(event()) == ["event_without_transaction"]


def test_duplicates_and_each_transactions_kind_or_amount() -> None:
    found = event(transaction(1), transaction(2, kind="clawback"), transaction(3, moments=999))
    assert codes(found) == ["duplicate_transactions", "kind_differs", "amount_differs"]
    assert [m.transaction_id for m in event_mismatches(found)] == [None, 2, 3]
