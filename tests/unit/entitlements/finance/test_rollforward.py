"""The roll-forward's arithmetic, pure: each identity holds on a consistent ledger and is named when not."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import msgspec
import pytest

from entitlements.errors import ValidationFailed
from entitlements.finance.service import Sums, build_rollforward, period_bounds, rollforward_csv

SINCE, UNTIL = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
# A month: 100 sold before it; in it 50 sold, 20 promoted, 30 captured (2 refunded), 5 expired, and a
# clawback of 40 of which 10 became debt, 4 of it repaid by a later purchase. Held 6 at the end.
CONSISTENT = {
    "system:sales": Sums(opening=-100, debits=50, closing=-150),
    "system:promotions": Sums(opening=0, debits=20, closing=-20),
    "system:revenue": Sums(opening=0, credits=30, debits=2, closing=28),
    "system:expired": Sums(opening=0, credits=5, closing=5),
    "system:clawback": Sums(opening=0, credits=40, closing=40),
    "user_available": Sums(opening=100, closing=100 + 50 + 20 - 30 - 6 + 2 - 5 - 30 - 4),
    "user_held": Sums(opening=0, closing=6),
    "user_debt": Sums(opening=0, debits=10, credits=4, closing=-6),
}


def test_a_consistent_ledger_ties_with_each_flow_where_it_belongs() -> None:
    report = build_rollforward(CONSISTENT, since=SINCE, until=UNTIL, final=True)
    assert report.ties
    assert report.failing == []
    assert report.opening.liability == 100
    assert (report.flows.sold, report.flows.promotions, report.flows.refunds_to_users) == (50, 20, 2)
    assert (report.flows.revenue, report.flows.breakage, report.flows.clawbacks) == (30, 5, 40)
    assert report.inflows == 72
    assert report.outflows == 75
    assert report.closing.liability == 100 + 72 - 75 == report.closing.available + 6 - 6
    assert report.debt.opening + report.debt.created - report.debt.repaid == report.debt.closing == 6


@pytest.mark.parametrize(
    ("account", "change", "failing"),
    [
        # Users hold a moment more than the system accounts gave out: the closing balances disagree.
        ("user_available", {"closing": 1}, ["liability", "closing_balances"]),
        ("user_held", {"opening": 1}, ["liability", "opening_balances"]),
        # A system account's movement that its postings in the period do not explain.
        ("system:revenue", {"closing": 1}, ["closing_balances", "system_accounts"]),
        ("user_debt", {"credits": 1}, ["debt"]),
    ],
)
def test_an_identity_that_fails_is_named(account: str, change: dict[str, int], failing: list[str]) -> None:
    sums = dict(CONSISTENT)
    old = sums[account]
    sums[account] = msgspec.structs.replace(old, **{k: getattr(old, k) + v for k, v in change.items()})
    report = build_rollforward(sums, since=SINCE, until=UNTIL, final=True)
    assert not report.ties
    assert report.failing == failing
    assert [identity.name for identity in report.identities if not identity.holds] == failing


def test_the_csv_says_the_same_as_the_json() -> None:
    report = build_rollforward(CONSISTENT, since=SINCE, until=UNTIL, final=False)
    rows = list(csv.reader(io.StringIO(rollforward_csv(report))))
    assert rows[0] == ["item", "moments"]
    items = dict(rows[1:])
    assert int(items["opening_liability"]) == 100
    assert int(items["closing_liability"]) == report.closing.liability
    assert items["+sold"] == "50"
    assert items["-revenue"] == "30"
    assert items["system:sales:debits"] == "50"
    assert (items["ties"], items["final"], items["ties:debt"]) == ("true", "false", "true")


@pytest.mark.parametrize(
    ("period", "since", "until"),
    [
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("9998-12", datetime(9998, 12, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)),
    ],
)
def test_a_period_is_a_month_in_utc(period: str, since: datetime, until: datetime) -> None:
    assert period_bounds(period) == (since, until)


@pytest.mark.parametrize("period", ["1999-12", "9999-01", "9999-12"])
def test_a_period_outside_the_years_kept_is_refused(period: str) -> None:
    with pytest.raises(ValidationFailed):
        period_bounds(period)
