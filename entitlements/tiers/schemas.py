"""Tiers and entitlements: requests and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import pricing
from entitlements.schemas import Balance, Struct


class SubscriptionSet(Struct, frozen=True):
    tier: pricing.TierName


class SubscriptionOut(Struct, frozen=True):
    user_id: str
    tier: pricing.TierName


class VideoEntitlement(Struct, frozen=True):
    allowed: bool
    # The problem code a generation request would be refused with now, or null.
    reason: Literal["tier_required", "in_debt", "insufficient_moments"] | None


class EntitlementsOut(Struct, frozen=True):
    user_id: str
    tier: pricing.TierName
    balance: Balance
    owed: int
    video: VideoEntitlement


class SubscriptionView(Struct, frozen=True):
    """A user's tier now and the subscription behind it (the console's)."""

    tier: pricing.TierName
    # manual (an admin's), stripe, or none (no row: FREE).
    source: Literal["manual", "stripe", "none"]
    stripe_status: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
