"""Tiers and the video gate. No subscription row means FREE, and the gate fails closed."""

from __future__ import annotations

from typing import Literal

import pricing
from ledger.engine import Connection

Tier = Literal["FREE", "PREMIUM", "ULTIMATE"]
TIERS: tuple[Tier, ...] = ("FREE", "PREMIUM", "ULTIMATE")


async def tier_of(connection: Connection, user_id: str) -> str:
    tier = await connection.fetchval("SELECT tier FROM subscriptions WHERE user_id = $1", user_id)
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
