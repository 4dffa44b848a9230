"""Tiers and the video gate. No subscription row means FREE, and the gate fails closed.

A Stripe subscription canceled at period end keeps its tier until `current_period_end` and is FREE from
then on, even before Stripe's `customer.subscription.deleted` arrives (or if it never does).
"""

from __future__ import annotations

from typing import Literal

import pricing
from ledger.engine import Connection

Tier = Literal["FREE", "PREMIUM", "ULTIMATE"]
TIERS: tuple[Tier, ...] = ("FREE", "PREMIUM", "ULTIMATE")


async def tier_of(connection: Connection, user_id: str) -> str:
    # The database's clock decides when a period has ended, the same clock for every API process.
    tier = await connection.fetchval(
        """
        SELECT CASE WHEN source = 'stripe' AND cancel_at_period_end AND current_period_end <= now()
                    THEN $2 ELSE tier END
        FROM subscriptions WHERE user_id = $1
        """,
        user_id,
        pricing.FREE_TIER,
    )
    return str(tier) if tier is not None else pricing.FREE_TIER


async def set_manual_tier(connection: Connection, user_id: str, tier: str) -> None:
    await connection.execute(
        """
        INSERT INTO subscriptions (user_id, tier, source) VALUES ($1, $2, 'manual')
        ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier, source = 'manual', updated_at = now()
        """,
        user_id,
        tier,
    )


def video_refusal(catalog: pricing.Catalog, tier: str, owed: int) -> str | None:
    """The problem code that stops this user generating a video, or None. Unknown tiers are refused."""
    known = catalog.tier(tier)
    if known is None or not known.video_allowed:
        return "tier_required"
    if owed > 0:
        return "in_debt"
    return None
