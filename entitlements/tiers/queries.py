"""Every SQL statement of tiers."""

# The database's clock decides when a period has ended, the same clock for every API process.
TIER_OF = """
SELECT CASE WHEN source = 'stripe' AND cancel_at_period_end AND current_period_end <= now()
            THEN $2 ELSE tier END
FROM subscriptions WHERE user_id = $1
"""

SET_MANUAL_TIER = """
INSERT INTO subscriptions (user_id, tier, source) VALUES ($1, $2, 'manual')
ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier, source = 'manual', updated_at = now()
"""

SUBSCRIPTION_OF = """
SELECT tier, source, stripe_status, current_period_end, cancel_at_period_end FROM subscriptions WHERE user_id = $1
"""
