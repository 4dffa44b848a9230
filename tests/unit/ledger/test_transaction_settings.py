"""What every ledger transaction is SET LOCAL with: the planner settings, then the caller's, in one string."""

from __future__ import annotations

import pytest

from ledger.engine import PLAN_SETTINGS, Engine, transaction_settings_sql


def test_the_callers_settings_follow_the_planners_in_one_string() -> None:
    sql = transaction_settings_sql({"statement_timeout": "15000", "moments.balance_low_threshold_moments": "500"})
    assert sql == (
        f"{PLAN_SETTINGS}; SET LOCAL statement_timeout = '15000';"
        " SET LOCAL moments.balance_low_threshold_moments = '500'"
    )
    assert Engine().settings_sql == PLAN_SETTINGS


def test_a_value_is_quoted_and_a_name_must_be_a_settings_name() -> None:
    assert transaction_settings_sql({"application_name": "it's"}).endswith("SET LOCAL application_name = 'it''s'")
    for name in ("statement_timeout; DROP TABLE x", "Moments.x", "a.b.c", ""):
        with pytest.raises(ValueError, match="not a setting's name"):
            transaction_settings_sql({name: "1"})
