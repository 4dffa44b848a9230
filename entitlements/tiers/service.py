"""Tiers and the video gate. No subscription row means FREE, and the gate fails closed.

A Stripe subscription canceled at period end keeps its tier until `current_period_end` and is FREE from
then on, even before Stripe's `customer.subscription.deleted` arrives (or if it never does).
"""

from __future__ import annotations

from typing import Literal

import asyncpg

import ledger
import pricing
from entitlements.quotes import cheapest_moments
from entitlements.schemas import Balance
from entitlements.tiers import queries
from entitlements.tiers.schemas import EntitlementsOut, SubscriptionOut, VideoEntitlement

Refusal = Literal["tier_required", "in_debt", "insufficient_moments"]


async def tier_of(connection: ledger.Connection | asyncpg.Pool, user_id: str) -> pricing.TierName:
    tier = await connection.fetchval(queries.TIER_OF, user_id, pricing.FREE_TIER)
    return tier if tier in pricing.TIER_NAMES else pricing.FREE_TIER


async def set_manual_tier(pool: asyncpg.Pool, user_id: str, tier: pricing.TierName) -> SubscriptionOut:
    """An admin's override; Stripe's events set the tier otherwise."""
    await pool.execute(queries.SET_MANUAL_TIER, user_id, tier)
    return SubscriptionOut(user_id=user_id, tier=tier)


def video_refusal(catalog: pricing.Catalog, tier: str, owed: int) -> Literal["tier_required", "in_debt"] | None:
    """The problem code that stops this user generating a video, or None. Unknown tiers are refused."""
    known = catalog.tier(tier)
    if known is None or not known.video_allowed:
        return "tier_required"
    if owed > 0:
        return "in_debt"
    return None


async def entitlements(
    pool: asyncpg.Pool,
    catalog: pricing.Catalog,
    table: pricing.PriceTable,
    user_id: str,
) -> EntitlementsOut:
    row = await pool.fetchrow(queries.TIER_AND_BALANCES, user_id, pricing.FREE_TIER)
    assert row is not None, "the query answers one row for any user"
    tier = row["tier"] if row["tier"] in pricing.TIER_NAMES else pricing.FREE_TIER
    reason: Refusal | None = video_refusal(catalog, tier, row["owed"])
    if reason is None and row["available"] < cheapest_moments(table):
        reason = "insufficient_moments"
    return EntitlementsOut(
        user_id=user_id,
        tier=tier,
        balance=Balance(available=row["available"], held=row["held"]),
        owed=row["owed"],
        video=VideoEntitlement(allowed=reason is None, reason=reason),
    )
