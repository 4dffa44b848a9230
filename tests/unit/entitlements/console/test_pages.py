"""The console's pure parts: how figures are written, form values read, and sign-in's redirect bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import ledger
from entitlements.console import tokens_match
from entitlements.console.controllers import _moments, _safe_next, _window
from entitlements.console.pages import balance_series, delta, moments, person, short, when
from entitlements.errors import ValidationFailed


def test_figures_are_written_with_separators_and_a_real_minus() -> None:
    assert moments(1234567) == "1,234,567"
    assert moments(None) == "—"
    assert (delta(500), delta(-500), delta(0)) == ("+500", "\u2212500", "0")


def test_times_are_written_in_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    assert when(datetime(2026, 11, 30, 20, 0, tzinfo=eastern)) == "2026-12-01 01:00:00"
    assert when(None) == "—"


def test_ids_and_actors() -> None:
    assert short("0123456789abcdef") == "01234567…"
    assert short("abc") == "abc"
    assert person("key:12:alice") == "alice"
    assert person("key:12:name:with:colons") == "name:with:colons"
    assert person("system:dispatcher") == "system:dispatcher"


def test_the_balance_chart_runs_oldest_first() -> None:
    def item(transaction_id: int, after: int) -> ledger.JournalItem:
        now = datetime.now(UTC)
        return ledger.JournalItem(
            transaction_id=transaction_id,
            kind="grant",
            delta_available=1,
            delta_held=0,
            delta_owed=0,
            available_after=after,
            held_after=0,
            owed_after=0,
            reference=None,
            reason=None,
            actor="a",
            created_at=now,
        )

    series = balance_series([item(3, 30), item(2, 20), item(1, 10)])
    assert series == {"labels": ["#1 grant", "#2 grant", "#3 grant"], "values": [10, 20, 30]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5", 5), (" 1,000 ", 1000), ("1_000", 1000), ("9999999999999", 9_999_999_999_999)],
)
def test_moments_from_a_form(text: str, expected: int) -> None:
    assert _moments(text, required=True) == expected


@pytest.mark.parametrize("text", ["abc", "-5", "1.5", "1e3", "99999999999999", "\uff15"])
def test_moments_that_are_not_a_whole_number_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        _moments(text, required=True)
    assert refused.value.field == "moments"


def test_moments_may_be_left_out_only_where_optional() -> None:
    assert _moments("", required=False) is None
    with pytest.raises(ValidationFailed):
        _moments("  ", required=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/console/users/alice", "/console/users/alice"),
        (None, "/console"),
        ("https://evil.example/console", "/console"),
        ("//evil.example/console", "/console"),
        ("/console\\@evil", "/console"),
        ("/v1/keys", "/console"),
    ],
)
def test_sign_in_only_ever_sends_you_to_a_console_page(value: str | None, expected: str) -> None:
    assert _safe_next(value) == expected


def test_a_window_from_dates_or_instants() -> None:
    since, until = _window("2026-11-01", "2026-12-01T12:00:00+01:00")
    assert since == datetime(2026, 11, 1, tzinfo=UTC)
    assert until == datetime(2026, 12, 1, 11, tzinfo=UTC)
    assert _window(None, "") == (None, None)
    for since_text, until_text in (("yesterday", None), ("2026-13-01", None), ("2026-12-02", "2026-12-01")):
        with pytest.raises(ValidationFailed):
            _window(since_text, until_text)


def test_csrf_tokens_match_only_exactly() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match(None, None)
    assert not tokens_match("", "")
