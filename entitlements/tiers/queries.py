"""Every SQL statement of tiers."""


# The database's clock decides when a period has ended, the same clock for every API process.
def tier_expression(row: str = "", free_tier: str = "$2") -> str:
    """A subscription row's tier as of now, as SQL: `row` is the table's alias with its dot ("s."), and
    `free_tier` the parameter holding the FREE tier's name. Other domains' statements embed it."""
    return (
        f"CASE WHEN {row}source = 'stripe' AND {row}cancel_at_period_end AND {row}current_period_end <= now() "
        f"THEN {free_tier} ELSE {row}tier END"
    )


_TIER = tier_expression()
TIER_OF = f"SELECT {_TIER} FROM subscriptions WHERE user_id = $1"

# An entitlement check in one round trip: the tier and the user's balances, read (never written) from the
# ledger's own balance row. A user with neither row is FREE with nothing.
TIER_AND_BALANCES = f"""
SELECT (SELECT {_TIER} FROM subscriptions WHERE user_id = $1) AS tier,
       coalesce(b.available, 0) AS available, coalesce(b.held, 0) AS held, coalesce(b.owed, 0) AS owed
FROM (SELECT) AS one LEFT JOIN ledger_balances b ON b.user_id = $1
"""

SET_MANUAL_TIER = """
INSERT INTO subscriptions (user_id, tier, source) VALUES ($1, $2, 'manual')
ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier, source = 'manual', updated_at = now()
"""

SUBSCRIPTION_OF = """
SELECT tier, source, stripe_status, current_period_end, cancel_at_period_end FROM subscriptions WHERE user_id = $1
"""
