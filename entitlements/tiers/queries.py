"""Every SQL statement of tiers."""

# The database's clock decides when a period has ended, the same clock for every API process.
_TIER = "CASE WHEN source = 'stripe' AND cancel_at_period_end AND current_period_end <= now() THEN $2 ELSE tier END"
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
